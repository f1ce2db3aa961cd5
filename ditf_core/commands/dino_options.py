"""``--dino`` (DINOv2 fusion, the SD-DINO recipe) on ``extract`` and on the PCK benchmarks of ``eval``: the options,
their checks before any model loads, loading DINOv2 after the DiT, and the fusion step.

    add_dino_arguments(parser)                          # --dino PATH, --dit-weight, --dino-resolution [, --dino-pca]
    check_dino_options(args, plan, image_sizes)         # before the DiT loads
    dino = load_dino(args, pipeline)                    # None without --dino
    extractor, settings = cached_extractor(pipeline, dino, args, options)  # per image, for a feature store
    fused = fuse_images(dino, args, features, images)   # --dino-pca: one PCA over all of them
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from ..cli_checks import ModelPlan
from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..fusion.dino import DEFAULT_DINO_RESOLUTION, check_dino_resolution
from ..fusion.fuse import DEFAULT_DIT_WEIGHT, check_dit_weight, fuse_dino_jointly
from ..mapping import PixelMapping


def add_dino_arguments(parser: argparse.ArgumentParser, *, pca: bool = True) -> None:
    """The DINOv2 fusion options; ``pca`` adds ``--dino-pca`` (one fit over all images of the run)."""
    group = parser.add_argument_group('DINOv2 fusion, the SD-DINO recipe (needs pip install "comfyui-ditf[dino]")')
    group.add_argument("--dino", type=Path, help="local transformers DINOv2 folder (config.json + .safetensors, e.g. "
                       "facebook/dinov2-large downloaded once): fuse the DiTF features with DINOv2")
    group.add_argument("--dit-weight", type=float, default=DEFAULT_DIT_WEIGHT,
                       help="weight a of the L2-normalised DiTF part; DINOv2 gets 1 - a (default 0.5, SD-DINO)")
    group.add_argument("--dino-resolution", type=int, default=DEFAULT_DINO_RESOLUTION,
                       help="long side fed to DINOv2, rounded to 14 px (default 840, SD-DINO)")
    if pca:
        group.add_argument("--dino-pca", type=int, default=0, help="reduce the DiTF part to N dims with one PCA "
                           "fitted jointly over all images of this run (default 0: off; SD-DINO uses 256)")


def check_dino_options(args, plan: ModelPlan, image_sizes: Sequence[tuple[int, int]]) -> None:
    """Before any model loads: the fusion options need ``--dino``; ``--dit-weight``, ``--dino-resolution`` and
    ``--dino-pca`` in range (the PCA: at most the DiT's channels, fewer than the cells of all ``image_sizes``
    (width, height) together); the DINOv2 folder (config, weights' headers, transformers installed)."""
    if args.dino is None:
        changed = [flag for flag, value, default in _options(args) if value != default]
        if changed:
            raise DiTFInputError(f"{', '.join(changed)}: only used with --dino PATH (a DINOv2 folder)")
        return
    for option, check, value in (("--dit-weight", check_dit_weight, args.dit_weight),
                                 ("--dino-resolution", check_dino_resolution, args.dino_resolution)):
        try:
            check(value)
        except DiTFInputError as error:
            raise DiTFInputError(f"{option}: {error}") from None
    if getattr(args, "dino_pca", 0):
        _check_pca_dims(args, plan, image_sizes)
    from ..fusion.transformers_dino import check_dinov2_folder

    check_dinov2_folder(args.dino)


def load_dino(args, pipeline):
    """The DINOv2 ``--dino`` names, on the pipeline's device and dtype; None without ``--dino``."""
    if args.dino is None:
        return None
    from ..fusion.transformers_dino import load_dinov2

    return load_dinov2(args.dino, device=pipeline.device, dtype=pipeline.dtype)


def fuse_images(dino, args, features: Sequence[DiTFeatures], images: Sequence) -> list[DiTFeatures]:
    """Each image's DiTF features fused with its DINOv2 features; one PCA over all of them with ``--dino-pca``."""
    encoded = [dino.encode(image, resolution=args.dino_resolution) for image in images]
    return fuse_dino_jointly(features, encoded, dit_weight=args.dit_weight, pca_dims=getattr(args, "dino_pca", 0))


def fusing_extractor(extract: Callable, dino, args) -> Callable:
    """``extract`` (image -> DiTFeatures) followed by the fusion, or ``extract`` itself without ``--dino``."""
    if dino is None:
        return extract

    def extract_and_fuse(image) -> DiTFeatures:
        return fuse_images(dino, args, [extract(image)], [image])[0]

    return extract_and_fuse


def fusion_cache_settings(dino, args) -> dict:
    """What the fusion adds to a feature cache key."""
    return {"dino": dino.describe(), "dit_weight": args.dit_weight, "dino_resolution": args.dino_resolution}


def cached_extractor(pipeline, dino, args, options: dict) -> tuple[Callable, dict]:
    """The ``image -> DiTFeatures`` extractor of a run that keeps per-image features in a feature store (the PCK
    benchmarks, extract-dataset): ``pipeline.extract(image, **options)``, fused with ``dino`` when given; and the
    settings that key its store entries (the model and every extraction setting; fused features apart)."""
    from ..dataset.store import extraction_settings

    settings = extraction_settings(pipeline, args.model, options)
    if dino is not None:
        settings["fusion"] = fusion_cache_settings(dino, args)

    def extract(image) -> DiTFeatures:
        return pipeline.extract(image, **options)

    return fusing_extractor(extract, dino, args), settings


def _check_pca_dims(args, plan: ModelPlan, image_sizes: Sequence[tuple[int, int]]) -> None:
    channels = plan.family.hidden_size(plan.skeleton)
    resolution = plan.family.defaults(plan.skeleton).resolution if args.resolution is None else args.resolution
    stride = plan.family.patch * plan.family.vae_factor
    cells = 0
    for width, height in image_sizes:
        grid_width, grid_height = PixelMapping.for_image(width, height, resolution, stride).grid_size
        cells += grid_width * grid_height
    most = min(channels, cells - 1)
    if not 0 <= args.dino_pca <= most:
        raise DiTFInputError(f"--dino-pca must be between 0 (off) and {most} here (at most the DiT's {channels} "
                             f"channels, fewer than the {cells} feature cells of all images), got {args.dino_pca}")


def _options(args):
    yield "--dit-weight", args.dit_weight, DEFAULT_DIT_WEIGHT
    yield "--dino-resolution", args.dino_resolution, DEFAULT_DINO_RESOLUTION
    if hasattr(args, "dino_pca"):
        yield "--dino-pca", args.dino_pca, 0
