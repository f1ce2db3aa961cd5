"""``python -m ditf_core inspect [IMAGES...] (--model PATH | --demo) [--layers 28 | 20,28] [--out ditf_inspect]``:
the massive-activation inspector. Writes report.json, sweep.safetensors and PNG pictures (see the README)."""

from __future__ import annotations

from pathlib import Path

from ..cli_args import add_model_arguments, add_output_argument, add_sampling_arguments, model_banner, sampling_kwargs
from ..cli_checks import check_images, check_sampling_options, load_planned, parse_layers, plan_model
from ..errors import DiTFInputError
from ..outputs import OutputFolder
from ..wording import plural

NAME = "inspect"


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="massive-activation inspector: report.json + PNG pictures",
                                 description=__doc__)
    parser.add_argument("images", nargs="*", type=Path, help="image files (default: the bundled sample pair)")
    add_output_argument(parser, "ditf_inspect")
    add_model_arguments(parser)
    group = parser.add_argument_group("inspection (defaults: the model family's)")
    group.add_argument("--layers", help="blocks to analyse in detail, like '28' or '20,28' (default or -1: the "
                                        "family's layer k)")
    add_sampling_arguments(group)
    group.add_argument("--ratio", type=float, default=100.0, help="massive: channel median >= RATIO x map median")
    group.add_argument("--weak-ratio", type=float, default=10.0, help="weakly massive after AdaLN (default 10)")
    group.add_argument("--gate-k", type=int, help="top-|gate| channels compared (default: number of massive ones)")
    group.add_argument("--no-sweep", action="store_true", help="capture only --layers, no full-depth layer sweep")
    group.add_argument("--cache-dir", type=Path, help="also keep the sweep in this folder for later runs")
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from PIL import Image

    from ..inspect import SweepCache, inspect_pipeline
    from ..inspect.analysis import check_ratio
    from ..samples import sample_pair

    images = check_images(args.images) if args.images else list(sample_pair()[:2])
    plan = plan_model(args)
    layers = parse_layers(args.layers, plan)
    default = [plan.family.defaults(plan.skeleton).layer]  # with --no-sweep and no --layers, the only one captured
    check_sampling_options(args, plan, [images[0].size])  # one batch, one size: all are resized to the first's
    for option, value in (("--ratio", args.ratio), ("--weak-ratio", args.weak_ratio)):
        try:
            check_ratio(value, option)
        except ValueError as error:
            raise DiTFInputError(str(error)) from None
    hidden = plan.family.hidden_size(plan.skeleton)
    if args.gate_k is not None and not 1 <= args.gate_k <= hidden:
        raise DiTFInputError(f"--gate-k must be between 1 and {hidden} (this model's channels), got {args.gate_k}")
    if args.cache_dir is not None and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise DiTFInputError(f"--cache-dir {args.cache_dir} is a file, not a folder")

    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        pipeline = load_planned(plan, None if not args.no_sweep else layers or default)
        print(model_banner(pipeline))
        if len({image.size for image in images}) > 1:  # the statistics do not need the aspect
            width, height = images[0].size
            progress.note(f"resizing all images to {width}x{height} (the first image's size)")
            images = [image.resize(images[0].size, Image.Resampling.BICUBIC) for image in images]
        inspection = inspect_pipeline(
            pipeline,
            images,
            layers=layers,
            sweep=not args.no_sweep,
            cache=SweepCache(directory=args.cache_dir) if args.cache_dir else None,
            ratio=args.ratio,
            weak_ratio=args.weak_ratio,
            gate_k=args.gate_k,
            micro_batch=args.micro_batch,
            progress=progress.bar("inspect"),
            layer=layers[0] if layers else None,
            **sampling_kwargs(args),
        )
        written = inspection.save(folder.path)
        print(inspection.summary())
    print(f"wrote {plural(len(written), 'file')} to {args.out}: {', '.join(path.name for path in written)}")
    return 0
