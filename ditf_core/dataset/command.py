"""``python -m ditf_core extract-dataset SOURCE --out STORE (--model PATH | --demo) [...]``.

SOURCE is a folder (images found recursively) or a text file listing image paths (one per line, relative to the
list's folder; blank lines and lines starting with # are skipped). Features go to the feature store STORE
(:mod:`ditf_core.dataset.store`); under ``torchrun --nproc_per_node N -m ditf_core extract-dataset ...`` each rank
extracts its share. A rerun extracts only the images the store lacks. Rank 0 prints the run's JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import (  # shared options; cli.py registers this command from inside build_parser
    add_extract_arguments,
    add_model_arguments,
    check_model_choice,
    extract_kwargs,
    load_from_args,
    model_banner,
)
from ..errors import DiTFInputError
from .ranks import device_for_rank, process_group, ranks_from_env
from .runner import extract_on_ranks
from .store import extraction_settings, settings_folder, update_index

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def add_command(subparsers) -> argparse.ArgumentParser:
    """Register ``extract-dataset`` on the CLI's subcommands."""
    parser = subparsers.add_parser(
        "extract-dataset", help="a folder or list of images -> a feature store (torchrun: shared among the ranks)"
    )
    parser.add_argument("source", type=Path, help="folder of images (searched recursively) or a text file of paths")
    parser.add_argument("--out", type=Path, default=Path("ditf_store"), help="feature store (default ditf_store)")
    parser.add_argument("--summary", type=Path, help="also write the run's JSON summary to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser)
    add_extract_arguments(parser)
    parser.set_defaults(run=run_extract_dataset)
    return parser


def run_extract_dataset(args) -> int:
    check_model_choice(args)
    images = image_paths(args.source)
    ranks = ranks_from_env()
    args.device = device_for_rank(args.device, ranks)
    pipeline = load_from_args(args)
    if ranks.main:
        print(model_banner(pipeline), file=sys.stderr)
    options = extract_kwargs(args)
    settings = extraction_settings(pipeline, args.model, options)

    def extractor(image):
        return pipeline.extract(image, **options)

    with process_group(ranks, pipeline.device):
        summary = extract_on_ranks(images, extractor, args.out, settings, ranks=ranks, show_progress=not args.quiet)
    if ranks.main:
        summary = {**summary, "store": str(settings_folder(args.out, settings)),
                   "index": str(update_index(args.out, settings, images))}
        text = json.dumps(summary, indent=2)
        print(text)
        if args.summary is not None:
            args.summary.parent.mkdir(parents=True, exist_ok=True)
            args.summary.write_text(text + "\n")
    return 0


def image_paths(source: Path) -> list[Path]:
    """The images of a folder (recursively, sorted) or of a list file."""
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DiTFInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {source}")
        return images
    if not source.is_file():
        raise DiTFInputError(f"{source} is neither a folder of images nor a text file listing them")
    lines = [line.strip() for line in source.read_text().splitlines()]
    images = [source.parent / line for line in lines if line and not line.startswith("#")]
    if not images:
        raise DiTFInputError(f"{source} lists no images (one path per line)")
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise DiTFInputError(f"{len(missing)} image(s) listed in {source} do not exist, e.g. {missing[0]}")
    return images
