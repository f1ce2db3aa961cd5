"""``python -m ditf_core tune IMAGES --model PATH``: the layer finder from the command line (table, plot, JSON).

``add_command(subparsers)`` registers the command; ``ditf_core.cli`` calls it. The shared model / text options
come from ``ditf_core.cli``, imported when the parser is built (that module imports this one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DiTFInputError
from ..pipeline import MODES
from .search import DEFAULT_TS, DEFAULT_WARPS


def add_command(subparsers) -> None:
    from .. import cli

    parser = subparsers.add_parser("tune", help="find the best block and t for your images (known warps, PCK)")
    parser.add_argument("images", nargs="+", type=Path, help="your image files (each is warped and scored)")
    parser.add_argument("--out", type=Path, default=Path("ditf_tune"), help="output folder (tune.json, tune.png)")
    cli.add_model_arguments(parser)
    group = parser.add_argument_group("search")
    group.add_argument("--t", default=",".join(f"{t:g}" for t in DEFAULT_TS), help="t grid, like 0.1,0.26,0.5")
    group.add_argument("--warps", type=int, default=DEFAULT_WARPS, help=f"known warps per image (default {DEFAULT_WARPS})")
    group.add_argument("--layers", help="blocks to score, like '10,20,28' (default: every block)")
    group.add_argument("--ensemble", type=int, default=2, help="noise draws per capture (default 2)")
    group.add_argument("--resolution", type=int, help="long side fed to the model (default: the family's)")
    group.add_argument("--seed", type=int, default=0, help="seed of the warps and noise (default 0)")
    group.add_argument("--mode", default="ditf", choices=list(MODES), help="recipe variant scored")
    group.add_argument("--prompt", default="", help="text prompt (default empty)")
    group.add_argument("--micro-batch", type=int, help="rows per transformer pass, to bound memory")
    parser.set_defaults(run=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from PIL import Image

    from .. import cli
    from ..images import as_image_batch
    from . import tune_pipeline

    pipeline = cli.load_from_args(args)
    print(cli.model_banner(pipeline))
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise DiTFInputError(f"no image file at {', '.join(missing)}")
    images = [as_image_batch(Image.open(path).convert("RGB"))[0] for path in args.images]
    layers = cli.parse_index_list(args.layers, "--layers") if args.layers else None
    search = tune_pipeline(
        pipeline, images, layers=layers, ts=parse_ts(args.t), warps=args.warps, seed=args.seed, mode=args.mode,
        ensemble=args.ensemble, resolution=args.resolution, prompt=args.prompt, micro_batch=args.micro_batch,
        progress=cli.progress_printer("tune"),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps(search.to_dict(), indent=2, sort_keys=True) + "\n")
    search.plot().save(args.out / "tune.png")
    print(search.table())
    print(f"wrote tune.json and tune.png to {args.out}; use --layer {search.best_layer} --t {search.best_t:g}")
    return 0


def parse_ts(text: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise DiTFInputError(f"--t takes comma-separated numbers like 0.1,0.26,0.5, got {text!r}") from None
