"""What the video commands share (``propagate``, ``track``, ``eval davis``, ``eval tapvid``): their option groups,
and the checks that run before the model loads: the frames, masks and points, the video extraction settings.

Extraction defaults are the model family's VIDEO defaults (:func:`ditf_core.video.video_defaults`: DiTF's DAVIS
settings for Flux), resolved against the planned model before it loads. The family's video prompt ("a photo of a
image" for Flux) is used only when the model has text encoders; without them the conditioning is zero and the
recorded prompt is empty, so no record names a prompt that was not used.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..capture import check_layers
from ..cli_args import DEFAULT_LAYER, add_model_arguments, add_output_argument
from ..cli_checks import ModelPlan, check_distinct_stems, check_extract_options, load_planned, plan_model
from ..errors import DiTFInputError
from ..image_files import open_image
from ..pipeline import DiTFPipeline
from ..video import FrameFolder, PropagationSettings, TrackSettings, pipeline_source, video_defaults
from ..video.stream import FeatureSource
from ..wording import plural

def add_clip_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """What ``propagate`` and ``track`` share: FRAMES, ``--out`` (default ``out``), the model and the video
    extraction options."""
    parser.add_argument("frames", type=Path, help="folder of frames (name order) or an animated GIF/WebP/PNG")
    add_output_argument(parser, out)
    add_model_arguments(parser)
    add_video_extract_arguments(parser)


def add_video_extract_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("extraction (defaults: the family's video settings; Flux: DiTF's DAVIS values)")
    group.add_argument("--layer", type=int, default=DEFAULT_LAYER,
                       help="global block index k; -1: the video default (Flux: 24)")
    group.add_argument("--t", type=float, help="flow-matching time in (0, 1) (Flux default 0.09)")
    group.add_argument("--ensemble", type=int, help="noise draws averaged (Flux default 1)")
    group.add_argument("--resolution", type=int, help="long side fed to the model, 16-4096 (Flux default 960)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--prompt", help="text prompt; needs the model's text encoders (with them, Flux default "
                                        "'a photo of a image'; without them: zero conditioning)")
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


@dataclass(frozen=True)
class VideoPlan:
    """The checked model and the extraction settings every frame of every clip gets.

    extraction: ``DiTFPipeline.extract`` keyword arguments (layer, t, ensemble, resolution, seed, prompt, guidance),
    resolved; discard: as given ('auto' is chosen once per clip, on its first frames)."""

    model: ModelPlan
    extraction: dict
    discard: str

    def load(self) -> DiTFPipeline:
        """The pipeline (with --load-blocks auto only the blocks through the extraction layer)."""
        return load_planned(self.model, [self.extraction["layer"]])

    def source(self, pipeline) -> FeatureSource:
        """The frames -> DiTFeatures source of the loaded ``pipeline`` (one discard set per clip)."""
        return pipeline_source(pipeline, discard=self.discard, **self.extraction)

    def record(self, pipeline) -> dict:
        """What the results files record about the features."""
        return {"model": pipeline.describe(), "dtype": str(pipeline.dtype), "extract": self.extraction,
                "discard": self.discard}


def plan_video(args, frame_sizes) -> VideoPlan:
    """Check the model options and the video extraction options against the model and every clip's frame size
    (width, height), before anything loads."""
    plan = plan_model(args)
    depth = len(plan.family.blocks(plan.skeleton))
    video = video_defaults(plan.family.name, plan.family.defaults(plan.skeleton), depth)
    layer = video.layer if args.layer == DEFAULT_LAYER else args.layer
    try:
        check_layers(plan.skeleton, plan.family, [layer])
    except (ValueError, TypeError) as error:
        raise DiTFInputError(f"--layer: {str(error).rstrip('.')}, or -1 for the video default "
                             f"({video.layer})") from None
    prompt = args.prompt if args.prompt is not None else video.prompt if plan.encodes_prompts else ""
    extraction = dict(layer=layer, t=video.t if args.t is None else args.t,
                      ensemble=video.ensemble if args.ensemble is None else args.ensemble,
                      resolution=video.resolution if args.resolution is None else args.resolution,
                      seed=args.seed, prompt=prompt, guidance=args.guidance)
    # the shared checks of --t, --ensemble, --resolution (also against each frame size), --seed, --discard, ...
    check_extract_options(argparse.Namespace(**{**vars(args), **extraction, "layer": DEFAULT_LAYER, "mode": "ditf"}),
                          plan, frame_sizes)
    return VideoPlan(plan, extraction, args.discard)


def propagation_settings(args) -> PropagationSettings:
    return _settings(PropagationSettings, context=args.context, radius=args.radius, top_k=args.top_k,
                     temperature=args.temperature)


def track_settings(args) -> TrackSettings:
    return _settings(TrackSettings, threshold=args.threshold, search_radius=args.search_radius)


def open_frames(path: Path) -> FrameFolder:
    """The clip at ``path`` (a folder of frames or an animated image), every frame decoded once here so that a
    broken, foreign or odd-sized frame is named before the model loads; the run reads them again one at a time."""
    if path.is_file():
        open_image(path)  # an animated image: a readable file, within the pixel cap
    elif not path.is_dir():
        raise DiTFInputError(f"FRAMES {path} does not exist; give a folder of frames or an animated GIF/WebP/PNG")
    frames = FrameFolder(path)
    check_distinct_stems(frames.files, "{}.png", "keep one frame per name")
    for file in frames.files:
        size = open_image(file).size
        if size != frames.size:
            raise DiTFInputError(f"{file} is {size[0]}x{size[1]} but the first frame is "
                                 f"{frames.size[0]}x{frames.size[1]}; every frame of a clip needs one size")
    if len(frames) < 2:
        raise DiTFInputError(f"{path} holds {plural(len(frames), 'frame')}; a clip needs at least 2 (for single "
                             "images use `extract`)")
    return frames


def read_mask(path: Path, size: tuple[int, int], option: str = "--mask") -> torch.Tensor:
    """A mask file -> label map [H, W] int64: an indexed PNG's palette indices (255 = void -> 0), any other image
    brighter than half -> 1. It must have the frames' ``size`` (width, height) and mark at least one object."""
    try:
        image = open_image(path, mode=None)
    except DiTFInputError as error:
        raise DiTFInputError(f"{option}: {error}") from None
    if image.size != tuple(size):
        raise DiTFInputError(f"{option} {path} is {image.size[0]}x{image.size[1]} but the frames are "
                             f"{size[0]}x{size[1]}; give a mask of the frame size")
    labels = np.array(image) if image.mode == "P" else (np.array(image.convert("L")) > 127).astype(np.uint8)
    labels = np.where(labels == 255, 0, labels)
    if not labels.any():
        raise DiTFInputError(f"{option} {path} is empty: it marks no object")
    return torch.from_numpy(labels.astype(np.int64))


def _settings(kind, **values):
    """``kind(**values)`` (a settings dataclass that checks itself), its error naming the option."""
    try:
        return kind(**values)
    except DiTFInputError as error:
        field = str(error).split()[0]
        raise DiTFInputError(f"--{field.replace('_', '-')}: {error}") from None
