"""``python -m ditf_core eval BENCHMARK ...`` (also ``python -m ditf_core.eval BENCHMARK ...``): DiTF on benchmarks
you downloaded. ``spair``, ``pfpascal``, ``ap10k``: PCK of DiTF keypoint transfer on SPair-71k, PF-PASCAL and
AP-10K; ``davis``: J&F of label propagation on DAVIS-2017; ``tapvid``: point tracking on TAP-Vid-DAVIS (see
:mod:`ditf_core.commands.evaluate_video`). ``python -m ditf_core eval BENCHMARK --help`` lists each one's options.

PCK: prints a per-category table (percent) and writes the full result as JSON (``--output``). Features are cached
per image under ``--cache`` (default ``.ditf_cache/eval``), so an interrupted run resumes where it stopped.
Matching defaults to "exact", the paper protocol; ``--match fast`` is the feature-resolution variant. ``--dino
PATH`` fuses the features with a local DINOv2 (the paper's dagger setting; fused features are cached apart).

The PCK benchmarks also run under ``torchrun --nproc_per_node N -m ditf_core.eval BENCHMARK ...``: every rank
extracts its share of the images the cache lacks (each image once, whatever the number of pairs it is in), then
rank 0 scores from the cache and prints and writes the results (:func:`ditf_core.eval.harness.evaluate_on_ranks`).
``davis`` and ``tapvid`` run in one process.
"""

from __future__ import annotations

import json
import sys
import time
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
from ..outputs import write_json
from ..wording import plural
from .dino_options import add_dino_arguments, cached_extractor, check_dino_options, load_dino
from .evaluate_video import add_video_benchmarks

NAME = "eval"
PCK_BENCHMARKS = {"spair": ("SPair-71k", "SPair-71k folder"), "pfpascal": ("PF-PASCAL", "PF-dataset-PASCAL folder"),
                  "ap10k": ("AP-10K", "ap-10k folder")}


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="benchmarks: PCK on SPair-71k, PF-PASCAL, AP-10K; J&F on DAVIS-2017; "
                                            "TAP-Vid-DAVIS (datasets you downloaded)", description=__doc__)
    benchmarks = parser.add_subparsers(required=True, metavar="BENCHMARK")
    for dataset, (title, folder) in PCK_BENCHMARKS.items():
        add_pck_benchmark(benchmarks, dataset, title, folder)
    add_video_benchmarks(benchmarks)


def add_pck_benchmark(benchmarks, dataset: str, title: str, folder: str) -> None:
    """``eval <dataset> ROOT ...``: PCK on one semantic-correspondence benchmark (layouts: ditf_core.eval.datasets)."""
    from ..eval.pck import ALPHAS

    parser = benchmarks.add_parser(dataset, help=f"PCK of keypoint transfer on {title}",
                                   description=f"PCK of DiTF keypoint transfer on {title} (layout: see "
                                               "ditf_core.eval.datasets)")
    parser.add_argument("root", type=Path, help=f"dataset folder ({folder})")
    parser.add_argument("--split", default="test", help="annotation split (default test)")
    add_model_arguments(parser)
    add_extract_arguments(parser)
    add_dino_arguments(parser, pca=False)  # per-image features are cached: no PCA fitted per pair
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
    parser.set_defaults(run=run, dataset=dataset)


def run(args, progress) -> int:
    from ..dataset import device_for_rank, process_group, ranks_from_env
    from ..eval.datasets import READERS
    from ..eval.harness import evaluate, evaluate_on_ranks
    from ..eval.pck import format_table

    ranks = ranks_from_env()  # under torchrun: every rank extracts its share, rank 0 scores
    if ranks.launched and args.no_cache:
        raise DiTFInputError("under torchrun the ranks hand their features to rank 0 through the cache: drop "
                             "--no-cache (or run in one process)")
    args.device = device_for_rank(args.device, ranks)  # each rank its own GPU
    if args.limit is not None and args.limit < 1:
        raise DiTFInputError(f"--limit must be a positive number of pairs, got {args.limit}")
    if args.output is not None:
        check_output_file(args.output, "--output", "result.json")
    if not args.no_cache:
        check_folder_option(args.cache, "--cache", "or --no-cache")
    pairs = READERS[args.dataset](args.root, args.split)
    if args.category:
        pairs = [p for p in pairs if p.category in set(args.category)]
        if not pairs:
            raise DiTFInputError(f"no pairs of {plural(len(args.category), 'category', 'categories')} "
                                 f"{', '.join(args.category)} in {args.root} ({args.split} split)")
    pairs = pairs[: args.limit]
    plan = plan_model(args)
    options = check_extract_options(args, plan, [])
    check_dino_options(args, plan, [])

    pipeline = load_planned(plan, captured_layers(options, plan))
    dino = load_dino(args, pipeline)
    if ranks.main:
        print(model_banner(pipeline), file=sys.stderr)
    extractor, settings = cached_extractor(pipeline, dino, args, options)  # fused features: their own cache key

    started = time.perf_counter()
    scoring = dict(match=args.match, alphas=args.alphas, cache_dir=None if args.no_cache else args.cache,
                   cache_settings=settings, keep_predictions=args.predictions,
                   progress=None if args.quiet else progress.bar("evaluate", "pair"))
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
    print(f"{plural(len(pairs), 'pair')} in {elapsed:.1f}s; features extracted {result['features']['extracted']}, "
          f"from cache {result['features']['cached']}", file=sys.stderr)
    if args.output is not None:
        meta = {"dataset": args.dataset, "root": str(args.root), "split": args.split, "match": args.match}
        write_json(args.output, {**meta, "settings": settings, **result}, default=str)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
