"""``python -m ditf_core tune IMAGES... (--model PATH | --demo) [--t 0.1,0.26,0.5] [--out ditf_tune]``: the layer
finder (:mod:`ditf_core.tune`). Scores every block (or ``--layers``) at every t of the grid on known warps of your
images, prints the PCK table and the best (layer, t), and writes ``tune.json`` (the table) and ``tune.png`` (its
heatmaps)."""

from __future__ import annotations

from pathlib import Path

from ..cli_args import add_model_arguments, add_output_argument, model_banner
from ..cli_checks import check_images, check_minimums, check_resolution, load_planned, parse_layers, plan_model
from ..errors import DiTFInputError
from ..mapping import PixelMapping
from ..outputs import OutputFolder, save_image, write_json
from ..pipeline import MODES
from ..tune.search import DEFAULT_TS, DEFAULT_WARPS, check_cells, check_image_size, check_ts

NAME = "tune"


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="find the best block and t for your images (known warps, PCK)",
                                 description=__doc__)
    parser.add_argument("images", nargs="+", type=Path, help="your image files (each is warped and scored)")
    add_output_argument(parser, "ditf_tune")
    add_model_arguments(parser)
    group = parser.add_argument_group("search")
    group.add_argument("--t", default=",".join(f"{t:g}" for t in DEFAULT_TS), help="t grid, like 0.1,0.26,0.5")
    group.add_argument("--warps", type=int, default=DEFAULT_WARPS, help=f"known warps per image (default {DEFAULT_WARPS})")
    group.add_argument("--layers", help="blocks to score, like '10,20,28' (default: every block; -1: the family's k)")
    group.add_argument("--ensemble", type=int, default=2, help="noise draws per capture (default 2)")
    group.add_argument("--resolution", type=int, help="long side fed to the model, 16-4096 (default: the family's)")
    group.add_argument("--seed", type=int, default=0, help="seed of the warps and noise (default 0)")
    group.add_argument("--mode", default="ditf", choices=MODES, help="recipe variant scored")
    group.add_argument("--prompt", default="", help="text prompt (default empty); needs the model's text encoders")
    group.add_argument("--micro-batch", type=int, help="rows per transformer pass, to bound memory")
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from ..images import as_image_batch
    from ..tune import tune_pipeline

    pictures = check_images(args.images)
    plan = plan_model(args)
    layers = parse_layers(args.layers, plan)
    ts = parse_ts(args.t)
    check_minimums(("--warps", args.warps, 1), ("--ensemble", args.ensemble, 1), ("--micro-batch", args.micro_batch, 1),
                   ("--seed", args.seed, 0))
    sizes = [picture.size for picture in pictures]
    resolution = check_resolution(args.resolution, plan, sizes)
    stride = plan.family.patch * plan.family.vae_factor
    for index, (path, (width, height)) in enumerate(zip(args.images, sizes)):
        try:
            check_image_size(index, width, height)
            grid_w, grid_h = PixelMapping.for_image(width, height, resolution, stride).grid_size
            check_cells(grid_h, grid_w)
        except DiTFInputError as error:
            raise DiTFInputError(f"{path}: {error}") from None

    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        pipeline = load_planned(plan)
        print(model_banner(pipeline))
        images = [as_image_batch(picture)[0] for picture in pictures]
        search = tune_pipeline(
            pipeline, images, layers=layers, ts=ts, warps=args.warps, seed=args.seed, mode=args.mode,
            ensemble=args.ensemble, resolution=resolution, prompt=args.prompt, micro_batch=args.micro_batch,
            progress=progress.bar(NAME, unit="capture"),
        )
        write_json(folder.path / "tune.json", search.to_dict())
        save_image(search.plot(), folder.path / "tune.png")
        print(search.table())
    print(f"wrote tune.json and tune.png to {args.out}; use --layer {search.best_layer} --t {search.best_t:g}")
    return 0


def parse_ts(text: str) -> list[float]:
    """--t text -> the checked t grid (sorted, without repeats)."""
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise DiTFInputError(f"--t takes comma-separated numbers like 0.1,0.26,0.5, got {text!r}") from None
    try:
        return check_ts(values)
    except (ValueError, TypeError) as error:
        raise DiTFInputError(f"--t: {error}") from None
