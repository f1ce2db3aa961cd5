"""``python -m ditf_core cosegment FEATURES.safetensors... --clusters K``: co-segment feature files written by
``extract`` (with or without ``--dino``), jointly.

Writes, per image: ``<stem>_clusters.png`` (the clusters in colour, over the image when ``--images`` gives it) and
``<stem>_cluster<j>.png`` (white inside cluster j, at the image size); and ``cosegment.json`` (clusters, sizes,
files).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..images import pil_to_tensor, tensor_to_pil
from .cosegment import MAX_CLUSTERS, cosegment


def add_command(subparsers) -> argparse.ArgumentParser:
    """Register ``cosegment`` on the CLI's subcommands (``argparse`` subparsers)."""
    parser = subparsers.add_parser("cosegment", help="co-segment feature files: K clusters over all images jointly")
    parser.add_argument("features", nargs="+", type=Path, help="feature files (.safetensors) from `extract`")
    parser.add_argument("--clusters", "-k", type=int, default=4, help=f"K, 2-{MAX_CLUSTERS} (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-means++ start (default 0)")
    parser.add_argument("--iterations", type=int, default=100, help="most K-means steps (default 100)")
    parser.add_argument("--images", nargs="+", type=Path, help="the original images, one per feature file, drawn "
                        "under the previews")
    parser.add_argument("--foreground", nargs="+", type=Path, help="mask images (white = foreground), one per "
                        "feature file: only cells at least half inside are clustered")
    parser.add_argument("--out", type=Path, default=Path("ditf_cosegment"), help="output folder")
    parser.set_defaults(run=run_cosegment)
    return parser


def run_cosegment(args) -> int:
    from PIL import Image

    features = [_load(path) for path in args.features]
    images = _matching_files(args.images, args.features, "--images")
    masks = _matching_files(args.foreground, args.features, "--foreground")
    foreground = None
    if masks is not None:
        foreground = [pil_to_tensor(Image.open(path))[:1] for path in masks]  # grey: any channel
    result = cosegment(features, args.clusters, foreground=foreground, seed=args.seed, iterations=args.iterations)
    args.out.mkdir(parents=True, exist_ok=True)
    written, index = [], 0
    for number, (path, maps) in enumerate(zip(args.features, features)):
        pixels = None
        if images is not None:
            pixels = pil_to_tensor(Image.open(images[number]))
            _check_size(pixels, maps, images[number])
        for item in range(maps.batch):
            stem = path.stem if maps.batch == 1 else f"{path.stem}_{item}"
            preview = tensor_to_pil(result.preview(index, pixels if maps.batch == 1 else None))
            written.append(_save(preview, args.out / f"{stem}_clusters.png"))
            for cluster, mask in enumerate(result.masks(index)):
                written.append(_save(tensor_to_pil(mask.expand(3, -1, -1)).convert("L"),
                                     args.out / f"{stem}_cluster{cluster}.png"))
            index += 1
    summary = {
        "clusters": result.clusters, "seed": args.seed, "sizes": result.sizes.tolist(),
        "iterations": result.iterations, "converged": result.converged,
        "features": [str(path) for path in args.features], "files": [path.name for path in written],
    }
    (args.out / "cosegment.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{result.images} image(s), {result.clusters} clusters of {result.sizes.tolist()} cells "
          f"({result.iterations} K-means steps) -> {args.out}")
    return 0


def _load(path: Path) -> DiTFeatures:
    if not path.is_file():
        raise DiTFInputError(f"no feature file at {path}; write one with `python -m ditf_core extract`")
    return DiTFeatures.load(path)


def _matching_files(paths, features, flag: str):
    if paths is None:
        return None
    if len(paths) != len(features):
        raise DiTFInputError(f"{flag} gives {len(paths)} files for {len(features)} feature files; give one for each")
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DiTFInputError(f"{flag}: no file at {', '.join(missing)}")
    return paths


def _check_size(pixels, features: DiTFeatures, path: Path) -> None:
    width, height = features.mapping.image_size
    if (pixels.shape[-1], pixels.shape[-2]) != (width, height):
        raise DiTFInputError(
            f"{path} is {pixels.shape[-1]}x{pixels.shape[-2]} but its features come from a {width}x{height} image; "
            "give the images the features were extracted from, in the same order"
        )


def _save(picture, path: Path) -> Path:
    picture.save(path)
    return path
