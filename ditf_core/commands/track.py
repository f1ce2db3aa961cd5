"""``python -m ditf_core track FRAMES --points JSON (--model PATH | --demo) [--out ditf_track]``: track points of the
first frame through a clip with DiTF features (our training-free tracker, see the README's Video section).

FRAMES as for ``propagate`` (a folder of frames in name order, or an animated GIF / WebP / PNG). JSON: KJNodes
points on the first frame, ``'[{"x": 120, "y": 80}]'``, or a ``.json`` file holding that. Writes ``tracks.json``
(per frame: x, y, visible, score of every point) and ``overlay/<frame>.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..cli_args import model_banner
from ..errors import DiTFInputError
from ..images import tensor_to_pil
from ..matching.points import check_points
from ..outputs import OutputFolder, save_image, write_json
from ..video import draw_tracks, track_clip
from ..wording import plural
from .video_options import (
    add_clip_arguments,
    add_track_arguments,
    open_frames,
    plan_video,
    track_settings,
)

NAME = "track"
TRAIL = 8  # frames of history drawn behind each point


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="track points of the first frame through a folder of frames",
                                 description=__doc__)
    add_clip_arguments(parser, "ditf_track")
    parser.add_argument("--points", required=True, help='points on the first frame: \'[{"x": 120, "y": 80}]\' or a '
                        ".json file holding that")
    add_track_arguments(parser)
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    frames = open_frames(args.frames)
    points = read_points(args.points, frames.size)
    settings = track_settings(args)
    plan = plan_video(args, [frames.size])
    names = frames.names()
    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        pipeline = plan.load()
        print(model_banner(pipeline))
        started = time.perf_counter()
        history, record = [], []
        steps = track_clip(plan.source(pipeline), frames, points, settings=settings, micro_batch=args.micro_batch,
                           progress=progress.bar(NAME, "frame"))
        for index, (name, frame, step) in enumerate(zip(names, frames, steps)):
            history.append(step.xy)
            record.append(step.record(index))
            picture = draw_tracks(frame, history[-TRAIL:], step.visible)
            save_image(tensor_to_pil(picture), folder.path / "overlay" / f"{name}.png")
        write_json(folder.path / "tracks.json", record)
        elapsed = time.perf_counter() - started
    print(f"{plural(len(points), 'point')} through {plural(len(frames), 'frame')} in {elapsed:.1f}s: wrote "
          f"{args.out / 'tracks.json'} and {args.out / 'overlay'}")
    return 0


def read_points(text: str, size: tuple[int, int]) -> torch.Tensor:
    """--points (JSON text, or a .json file holding it) -> [K, 2] pixels, checked against the frame ``size``."""
    if text.strip().endswith(".json"):
        path = Path(text.strip())
        if not path.is_file():
            raise DiTFInputError(f"--points {path}: no such file; give the file of points, or the JSON text itself")
        text = path.read_text(encoding="utf-8")
    try:
        return check_points(text, size, 1, name="--points")[0]
    except (DiTFInputError, TypeError) as error:  # the JSON parser's messages say "points", not the option
        message = str(error)
        raise DiTFInputError(message if message.startswith("--points") else f"--points: {message}") from None
