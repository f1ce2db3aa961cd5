"""``python -m ditf_core.eval DATASET ROOT (--model PATH | --demo) [...]``: PCK on SPair-71k, PF-PASCAL, AP-10K.

Prints a per-category table (percent) and writes the full result as JSON (``--output``). Features are cached
per image under ``--cache`` (default ``.ditf_cache/eval``), so an interrupted run resumes where it stopped.
Matching defaults to "exact", the paper protocol; ``--match fast`` is the feature-resolution variant.
Under ``torchrun --nproc_per_node N -m ditf_core.eval ...`` every rank extracts its share of the images first
(:func:`ditf_core.eval.harness.evaluate_on_ranks`) and rank 0 scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..cli import (
    add_extract_arguments,
    add_model_arguments,
    check_model_choice,
    extract_kwargs,
    load_from_args,
    model_banner,
)
from ..dataset import device_for_rank, extraction_settings, process_group, ranks_from_env
from ..errors import DiTFInputError
from .datasets import READERS
from .harness import evaluate, evaluate_on_ranks
from .pck import ALPHAS, format_table


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (DiTFInputError, ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ditf_core.eval", description="PCK of DiTF keypoint transfer on SPair-71k, PF-PASCAL and AP-10K"
    )
    parser.add_argument("dataset", choices=sorted(READERS), help="benchmark layout (see ditf_core.eval.datasets)")
    parser.add_argument("root", type=Path, help="dataset folder (SPair-71k, PF-dataset-PASCAL or ap-10k)")
    parser.add_argument("--split", default="test", help="annotation split (default test)")
    add_model_arguments(parser)
    add_extract_arguments(parser)
    run_group = parser.add_argument_group("evaluation")
    run_group.add_argument("--match", choices=["exact", "fast"], default="exact", help="matching (default exact)")
    run_group.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="PCK alphas")
    run_group.add_argument("--category", action="append", help="evaluate only this category (repeatable)")
    run_group.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    run_group.add_argument("--cache", type=Path, default=Path(".ditf_cache/eval"), help="feature cache folder")
    run_group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    run_group.add_argument("--output", type=Path, help="write the full result as JSON here")
    run_group.add_argument("--predictions", action="store_true", help="include predicted points in the JSON")
    run_group.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def run(args) -> int:
    check_model_choice(args)
    if args.limit is not None and args.limit < 1:
        raise DiTFInputError(f"--limit must be a positive number of pairs, got {args.limit}")
    pairs = READERS[args.dataset](args.root, args.split)
    if args.category:
        pairs = [p for p in pairs if p.category in set(args.category)]
        if not pairs:
            raise DiTFInputError(f"no pairs of categories {args.category} in {args.root} ({args.split})")
    pairs = pairs[: args.limit]

    ranks = ranks_from_env()  # torchrun: extract on every rank, score on rank 0
    args.device = device_for_rank(args.device, ranks)
    pipeline = load_from_args(args)
    if ranks.main:
        print(model_banner(pipeline), file=sys.stderr)
    options = extract_kwargs(args)
    settings = cache_settings(pipeline, args, options)

    def extractor(image):
        return pipeline.extract(image, **options)

    started = time.perf_counter()
    scoring = dict(match=args.match, alphas=args.alphas, cache_dir=None if args.no_cache else args.cache,
               cache_settings=settings, keep_predictions=args.predictions, progress=None if args.quiet else _progress)
    if not ranks.launched:
        result = evaluate(pairs, extractor, **scoring)
    else:
        with process_group(ranks, pipeline.device):
            result = evaluate_on_ranks(pairs, extractor, ranks=ranks, show_progress=not args.quiet, **scoring)
        if result is None:  # not rank 0: its share is in the cache
            return 0
        print(json.dumps({"extraction": result["extraction"]}), file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(format_table(result["summary"]))
    print(
        f"{len(pairs)} pairs in {elapsed:.1f}s; features extracted {result['features']['extracted']}, "
        f"from cache {result['features']['cached']}",
        file=sys.stderr,
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        meta = {"dataset": args.dataset, "root": str(args.root), "split": args.split, "match": args.match}
        args.output.write_text(json.dumps({**meta, "settings": settings, **result}, indent=2, default=str) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cache_settings(pipeline, args, options: dict) -> dict:
    """Everything that changes the features: the model (fingerprint, path, dtype) and resolved settings."""
    return extraction_settings(pipeline, args.model, options)


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 100) == 0:
        print(f"\r  pairs {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
