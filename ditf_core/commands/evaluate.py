"""``python -m ditf_core eval DATASET ROOT (--model PATH | --demo) [...]`` (also ``python -m ditf_core.eval``): PCK
of DiTF keypoint transfer on SPair-71k, PF-PASCAL and AP-10K.

Prints a per-category table (percent) and writes the full result as JSON (``--output``). Features are cached per
image under ``--cache`` (default ``.ditf_cache/eval``), so an interrupted run resumes where it stopped. Matching
defaults to "exact", the paper protocol; ``--match fast`` is the feature-resolution variant.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..cli_args import add_extract_arguments, add_model_arguments, model_banner
from ..cli_checks import check_extract_options, load_planned, plan_model
from ..errors import DiTFInputError
from ..outputs import write_json
from ..wording import plural

NAME = "eval"


def add_command(commands) -> None:
    from ..eval.datasets import READERS
    from ..eval.pck import ALPHAS

    parser = commands.add_parser(NAME, help="PCK on SPair-71k, PF-PASCAL or AP-10K (a dataset you downloaded)",
                                 description=__doc__)
    parser.add_argument("dataset", choices=sorted(READERS), help="benchmark layout (see ditf_core.eval.datasets)")
    parser.add_argument("root", type=Path, help="dataset folder (SPair-71k, PF-dataset-PASCAL or ap-10k)")
    parser.add_argument("--split", default="test", help="annotation split (default test)")
    add_model_arguments(parser)
    add_extract_arguments(parser)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--match", choices=["exact", "fast"], default="exact", help="matching (default exact)")
    group.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="PCK alphas")
    group.add_argument("--category", action="append", help="evaluate only this category (repeatable)")
    group.add_argument("--limit", type=int, help="evaluate only the first N pairs")
    group.add_argument("--cache", type=Path, default=Path(".ditf_cache/eval"), help="feature cache folder")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    group.add_argument("--output", type=Path, help="write the full result as JSON to this file")
    group.add_argument("--predictions", action="store_true", help="include predicted points in the JSON")
    group.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from ..eval.datasets import READERS
    from ..eval.harness import evaluate
    from ..eval.pck import format_table

    if args.limit is not None and args.limit < 1:
        raise DiTFInputError(f"--limit must be a positive number of pairs, got {args.limit}")
    _check_output_paths(args)
    pairs = READERS[args.dataset](args.root, args.split)
    if args.category:
        pairs = [p for p in pairs if p.category in set(args.category)]
        if not pairs:
            raise DiTFInputError(f"no pairs of {plural(len(args.category), 'category', 'categories')} "
                                 f"{', '.join(args.category)} in {args.root} ({args.split} split)")
    pairs = pairs[: args.limit]
    plan = plan_model(args)
    options = check_extract_options(args, plan, [])

    pipeline = load_planned(plan)
    print(model_banner(pipeline), file=sys.stderr)
    settings = cache_settings(pipeline, args, options)

    def extractor(image):
        return pipeline.extract(image, **options)

    started = time.perf_counter()
    result = evaluate(
        pairs,
        extractor,
        match=args.match,
        alphas=args.alphas,
        cache_dir=None if args.no_cache else args.cache,
        cache_settings=settings,
        keep_predictions=args.predictions,
        progress=None if args.quiet else progress.bar("evaluate", "pair"),
    )
    elapsed = time.perf_counter() - started
    print(format_table(result["summary"]))
    print(f"{plural(len(pairs), 'pair')} in {elapsed:.1f}s; features extracted {result['features']['extracted']}, "
          f"from cache {result['features']['cached']}", file=sys.stderr)
    if args.output is not None:
        meta = {"dataset": args.dataset, "root": str(args.root), "split": args.split, "match": args.match}
        write_json(args.output, {**meta, "settings": settings, **result}, default=str)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cache_settings(pipeline, args, options: dict) -> dict:
    """Everything that changes the features: the model (fingerprint, path, dtype) and resolved settings."""
    names = ("layer", "t", "ensemble", "resolution", "seed", "mode", "prompt", "guidance")
    resolved = pipeline.settings(**{k: options[k] for k in names})
    return {
        "model": pipeline.describe(),
        "model_path": "demo" if args.model is None else str(Path(args.model).resolve()),
        "dtype": str(pipeline.dtype),
        "extract": {**resolved.__dict__, "discard": options["discard"]},
    }


def _check_output_paths(args) -> None:
    """--output a writable file path (not a folder), --cache a folder (not a file)."""
    if args.output is not None:
        if args.output.is_dir():
            raise DiTFInputError(f"--output {args.output} is a folder; give a file name like result.json")
        parent = next((p for p in args.output.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise DiTFInputError(f"--output {args.output}: cannot write there; give a file in a folder you can "
                                 "write to")
    if not args.no_cache and args.cache.exists() and not args.cache.is_dir():
        raise DiTFInputError(f"--cache {args.cache} is a file, not a folder; give a folder or --no-cache")
