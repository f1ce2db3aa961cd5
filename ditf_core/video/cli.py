"""``python -m ditf_core propagate`` and ``python -m ditf_core track``: video from a folder of frames.

Frames: a folder of image files, taken in name order, or one animated GIF / WebP / PNG (decoded by Pillow). Video
files (mp4, ...) are not read: no video decoder is a dependency of this package; extract frames first (e.g.
``ffmpeg -i clip.mp4 frames/%05d.png``).

* ``propagate FRAMES --mask MASK [--keyframe N:MASK ...] --out DIR``: writes ``DIR/masks/<frame>.png`` (indexed,
  DAVIS palette: 0 background, 1.. objects) and ``DIR/overlay/<frame>.png``. MASK: an indexed PNG (its palette
  indices are the labels, 255 = void = background) or any other image (pixels brighter than half = object 1).
* ``track FRAMES --points JSON --out DIR``: writes ``DIR/tracks.json`` and ``DIR/overlay/<frame>.png``.

Extraction defaults are the model family's video defaults (DiTF's DAVIS settings for Flux, see
:func:`ditf_core.video.video_defaults`). ``add_command`` registers both commands; the model options and loader
are handed in by :mod:`ditf_core.cli` (so this module does not import it back).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import DiTFInputError
from ..images import tensor_to_pil
from .draw import draw_tracks, label_map_image, overlay_labels
from .propagate import propagate_clip
from .settings import PropagationSettings, TrackSettings, video_defaults
from .stream import FrameFolder, pipeline_source
from .track import track_clip


def add_command(subparsers, add_model_arguments: Callable, load_pipeline: Callable) -> None:
    """Add ``propagate`` and ``track``. add_model_arguments(parser) adds --model/--demo/...; load_pipeline(args)
    returns the DiTFPipeline they name."""
    propagate = subparsers.add_parser("propagate", help="propagate a first-frame mask through a folder of frames")
    propagate.add_argument("frames", type=Path, help="folder of frames (name order) or an animated GIF/WebP/PNG")
    propagate.add_argument("--mask", type=Path, required=True, help="mask of the first frame (indexed PNG or image)")
    propagate.add_argument("--keyframe", action="append", default=[], metavar="N:MASK",
                           help="restart from this mask at frame N (repeatable)")
    propagate.add_argument("--out", type=Path, default=Path("ditf_propagate"), help="output folder")
    add_model_arguments(propagate)
    add_video_extract_arguments(propagate)
    add_propagation_arguments(propagate)
    propagate.set_defaults(run=lambda args: run_propagate(args, load_pipeline(args)))

    track = subparsers.add_parser("track", help="track points of the first frame through a folder of frames")
    track.add_argument("frames", type=Path, help="folder of frames (name order) or an animated GIF/WebP/PNG")
    track.add_argument("--points", required=True, help='points on the first frame: \'[{"x": 120, "y": 80}]\' or a '
                       ".json file holding that")
    track.add_argument("--out", type=Path, default=Path("ditf_track"), help="output folder")
    add_model_arguments(track)
    add_video_extract_arguments(track)
    add_track_arguments(track)
    track.set_defaults(run=lambda args: run_track(args, load_pipeline(args)))


def add_video_extract_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("extraction (defaults: the family's video settings; Flux: DiTF's DAVIS values)")
    group.add_argument("--layer", type=int, help="global block index k (Flux default 24)")
    group.add_argument("--t", type=float, help="flow-matching time in (0, 1) (Flux default 0.09)")
    group.add_argument("--ensemble", type=int, help="noise draws averaged (Flux default 1)")
    group.add_argument("--resolution", type=int, help="long side fed to the model (Flux default 960)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--prompt", help="text prompt (Flux default 'a photo of a image')")
    group.add_argument("--guidance", type=float, default=3.5, help="Flux-dev guidance value (default 3.5)")
    group.add_argument("--discard", default="auto", help="'auto' (chosen on the first frame), 'none' or '154,1446'")
    group.add_argument("--micro-batch", type=int, default=1, help="frames per transformer pass (default 1)")


def add_propagation_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PropagationSettings()
    group = parser.add_argument_group("propagation (DINO / DIFT / DiTF protocol)")
    group.add_argument("--context", type=int, default=defaults.context, help="previous frames kept (default 7)")
    group.add_argument("--radius", type=int, default=defaults.radius, help="neighbourhood radius, cells (default 12)")
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="affinities kept per cell (default 5)")
    group.add_argument("--temperature", type=float, default=defaults.temperature, help="tau (default 0.1)")


def add_track_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrackSettings()
    group = parser.add_argument_group("tracking")
    group.add_argument("--threshold", type=float, default=defaults.threshold, help="occluded below this cosine (0.6)")
    group.add_argument("--search-radius", type=int, default=defaults.search_radius,
                       help="cells searched around the last position before the whole frame (default 8)")


def extraction_settings(args, pipeline) -> dict:
    """The extraction keyword arguments of ``pipeline.extract``: the options given, the video defaults otherwise."""
    video = video_defaults(pipeline.family.name, pipeline.defaults, pipeline.depth)
    return dict(layer=video.layer if args.layer is None else args.layer, t=video.t if args.t is None else args.t,
                ensemble=video.ensemble if args.ensemble is None else args.ensemble,
                resolution=video.resolution if args.resolution is None else args.resolution, seed=args.seed,
                prompt=video.prompt if args.prompt is None else args.prompt, guidance=args.guidance)


def video_source(args, pipeline):
    """The feature source the video options describe (one set of discarded channels for the whole clip)."""
    return pipeline_source(pipeline, discard=args.discard, **extraction_settings(args, pipeline))


def propagation_settings(args) -> PropagationSettings:
    return PropagationSettings(context=args.context, radius=args.radius, top_k=args.top_k,
                               temperature=args.temperature)


def run_propagate(args, pipeline) -> int:
    frames = FrameFolder(args.frames)
    first = read_mask(args.mask, frames.size)
    keyframes = {}
    for spec in args.keyframe:
        index, _, path = spec.partition(":")
        if not index.strip().isdigit() or not path:
            raise DiTFInputError(f"--keyframe takes N:MASK (a frame number and a mask file), got {spec!r}")
        keyframes[int(index)] = read_mask(Path(path), frames.size)
    names = frames.names()
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    (args.out / "overlay").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = propagate_clip(video_source(args, pipeline), frames, first, keyframes=keyframes,
                             settings=propagation_settings(args), micro_batch=args.micro_batch,
                             progress=frame_printer("propagate"))
    for index, labels in enumerate(results):
        label_map_image(labels).save(args.out / "masks" / f"{names[index]}.png")
        tensor_to_pil(overlay_labels(frames[index], labels)).save(args.out / "overlay" / f"{names[index]}.png")
    print(f"{len(frames)} frames in {time.perf_counter() - started:.1f}s -> {args.out}/masks, {args.out}/overlay")
    return 0


def run_track(args, pipeline) -> int:
    frames = FrameFolder(args.frames)
    points = Path(args.points).read_text() if args.points.endswith(".json") else args.points
    settings = TrackSettings(threshold=args.threshold, search_radius=args.search_radius)
    names = frames.names()
    (args.out / "overlay").mkdir(parents=True, exist_ok=True)
    history, record = [], []
    started = time.perf_counter()
    steps = track_clip(video_source(args, pipeline), frames, points, settings=settings, micro_batch=args.micro_batch,
                       progress=frame_printer("track"))
    for index, step in enumerate(steps):
        history.append(step.xy)
        record.append(step.record(index))
        picture = draw_tracks(frames[index], history[-8:], step.visible)
        tensor_to_pil(picture).save(args.out / "overlay" / f"{names[index]}.png")
    (args.out / "tracks.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(frames)} frames in {time.perf_counter() - started:.1f}s -> {args.out}/tracks.json, {args.out}/overlay")
    return 0


def read_mask(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A mask file -> label map [H, W]: an indexed PNG's indices (255 void -> 0), else brightness > half -> 1."""
    import numpy as np
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"no mask file at {path}")
    with Image.open(path) as image:
        if image.size != tuple(size):
            raise DiTFInputError(f"mask {path} is {image.size[0]}x{image.size[1]} but the frames are "
                                 f"{size[0]}x{size[1]}; give a mask of the frame size")
        labels = np.array(image) if image.mode == "P" else (np.array(image.convert("L")) > 127).astype(np.uint8)
    labels = np.where(labels == 255, 0, labels)
    if not labels.any():
        raise DiTFInputError(f"mask {path} is empty: it marks no object")
    return torch.from_numpy(labels.astype(np.int64))


def frame_printer(label: str):
    def report(done: int, total: int) -> None:
        print(f"\r  {label}: frame {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report
