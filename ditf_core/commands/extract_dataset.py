"""``python -m ditf_core extract-dataset SOURCE (--model PATH | --demo) [--out ditf_store]``: the features of every
image of a dataset into a feature store, shared among the ranks of ``torchrun --nproc_per_node N -m ditf_core
extract-dataset ...``.

SOURCE is a folder (images found recursively) or a text file listing image paths (one per line, relative to the
list's folder; blank lines and lines starting with # are skipped). The store (:mod:`ditf_core.dataset.store`) is the
layout of the ``eval`` feature cache, so ``--out .ditf_cache/eval`` with the same settings prepares an evaluation.
It is a cache, not a run's output folder: each feature file is written atomically as soon as it is extracted, so a
rerun after a crash, a kill or Ctrl-C extracts only the images the store lacks, on any number of ranks. Rank 0 prints
the run's JSON summary (per-rank throughput) and keeps ``index.json`` ({image path: feature file}) up to date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli_args import add_extract_arguments, add_model_arguments, model_banner
from ..cli_checks import (
    captured_layers,
    check_extract_options,
    check_folder_option,
    check_output_file,
    load_planned,
    plan_model,
)
from ..errors import DiTFInputError
from ..image_files import read_image_size
from ..outputs import write_json
from ..wording import plural
from .dino_options import add_dino_arguments, cached_extractor, check_dino_options, load_dino

NAME = "extract-dataset"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="a folder or list of images -> a feature store (torchrun: shared among "
                                            "the ranks)", description=__doc__)
    parser.add_argument("source", type=Path, help="folder of images (searched recursively) or a text file of paths")
    parser.add_argument("--out", type=Path, default=Path("ditf_store"),
                        help="feature store folder, created if needed; a rerun adds what it lacks (default ditf_store)")
    parser.add_argument("--summary", type=Path, help="also write the run's JSON summary to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser)
    add_extract_arguments(parser)
    add_dino_arguments(parser, pca=False)  # one image at a time: no PCA fitted over the run
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from ..dataset import device_for_rank, extract_on_ranks, process_group, ranks_from_env
    from ..dataset.store import settings_folder, update_index

    ranks = ranks_from_env()  # under torchrun: every rank extracts its share
    args.device = device_for_rank(args.device, ranks)  # each rank its own GPU
    images = image_paths(args.source)
    sizes = list(dict.fromkeys(read_image_size(path) for path in images))  # headers only: cheap for a dataset
    check_folder_option(args.out, "--out")
    if args.summary is not None:
        check_output_file(args.summary, "--summary", "summary.json")
    plan = plan_model(args)
    options = check_extract_options(args, plan, sizes)
    check_dino_options(args, plan, sizes)

    pipeline = load_planned(plan, captured_layers(options, plan))
    dino = load_dino(args, pipeline)
    if ranks.main:
        print(model_banner(pipeline), file=sys.stderr)
    extractor, settings = cached_extractor(pipeline, dino, args, options)
    with process_group(ranks, pipeline.device):
        summary = extract_on_ranks(images, extractor, args.out, settings, ranks=ranks, show_progress=not args.quiet)
    if ranks.main:
        summary = {**summary, "store": str(settings_folder(args.out, settings)),
                   "index": str(update_index(args.out, settings, images))}
        print(json.dumps(summary, indent=2))
        if args.summary is not None:
            write_json(args.summary, summary)
    return 0


def image_paths(source: Path) -> list[Path]:
    """The images of a folder (recursively, sorted) or of a list file; an error naming what is missing."""
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DiTFInputError(f"SOURCE {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return images
    if not source.is_file():
        raise DiTFInputError(f"SOURCE {source} does not exist; give a folder of images or a text file listing them")
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
    images = [source.parent / line for line in lines if line and not line.startswith("#")]
    if not images:
        raise DiTFInputError(f"SOURCE {source} lists no images; give one path per line, relative to its folder")
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise DiTFInputError(f"{source} lists {plural(len(missing), 'image')} that do not exist (e.g. {missing[0]}); "
                             "paths are relative to the list's folder")
    return images
