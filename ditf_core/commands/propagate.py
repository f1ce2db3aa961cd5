"""``python -m ditf_core propagate FRAMES --mask MASK [--keyframe N:MASK ...] (--model PATH | --demo) [--out
ditf_propagate]``: propagate the first frame's mask through a clip with DiTF features (DINO / DIFT / DiTF label
propagation, see the README's Video section).

FRAMES: a folder of image files, taken in name order, or one animated GIF / WebP / PNG. Video files (mp4, ...) are
not read: no video decoder is a dependency of this package; extract frames first (``ffmpeg -i clip.mp4
frames/%05d.png``). MASK: an indexed PNG (its palette indices are the labels, 255 = void = background) or any other
image (pixels brighter than half = object 1). Writes ``masks/<frame>.png`` (indexed, DAVIS palette: 0 background,
1.. objects) and ``overlay/<frame>.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..cli_args import model_banner
from ..errors import DiTFInputError
from ..images import tensor_to_pil
from ..outputs import OutputFolder, save_image
from ..video import label_map_image, overlay_labels, propagate_clip
from ..wording import plural
from .video_options import (
    add_clip_arguments,
    add_propagation_arguments,
    open_frames,
    plan_video,
    propagation_settings,
    read_mask,
)

NAME = "propagate"


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="propagate a first-frame mask through a folder of frames",
                                 description=__doc__)
    add_clip_arguments(parser, "ditf_propagate")
    parser.add_argument("--mask", type=Path, required=True, help="mask of the first frame (indexed PNG or image)")
    parser.add_argument("--keyframe", action="append", default=[], metavar="N:MASK",
                        help="restart from this mask at frame N (repeatable)")
    add_propagation_arguments(parser)
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    frames = open_frames(args.frames)
    first = read_mask(args.mask, frames.size)
    keyframes = read_keyframes(args.keyframe, frames.size, len(frames))
    settings = propagation_settings(args)
    plan = plan_video(args, [frames.size])
    names = frames.names()
    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        pipeline = plan.load()
        print(model_banner(pipeline))
        started = time.perf_counter()
        labelled = propagate_clip(plan.source(pipeline), frames, first, keyframes=keyframes, settings=settings,
                                  micro_batch=args.micro_batch, progress=progress.bar(NAME, "frame"))
        for name, frame, labels in zip(names, frames, labelled):
            save_image(label_map_image(labels), folder.path / "masks" / f"{name}.png")
            save_image(tensor_to_pil(overlay_labels(frame, labels)), folder.path / "overlay" / f"{name}.png")
        elapsed = time.perf_counter() - started
    print(f"{plural(len(frames), 'frame')} in {elapsed:.1f}s: wrote {args.out / 'masks'} and {args.out / 'overlay'}")
    return 0


def read_keyframes(specs: list[str], size: tuple[int, int], count: int) -> dict:
    """--keyframe N:MASK options -> {frame index: label map}; N must be a later frame of the clip."""
    keyframes = {}
    for spec in specs:
        index, _, path = spec.partition(":")
        if not index.strip().isdigit() or not path:
            raise DiTFInputError(f"--keyframe takes N:MASK (a frame number and a mask file), got {spec!r}")
        number = int(index)
        if not 1 <= number < count:
            raise DiTFInputError(f"--keyframe {spec}: frame {number} is not a later frame of the clip (1..{count - 1}; "
                                 "frame 0's mask is --mask)")
        if number in keyframes:
            raise DiTFInputError(f"--keyframe gives frame {number} twice; one mask per frame")
        keyframes[number] = read_mask(Path(path), size, f"--keyframe {number}")
    return keyframes
