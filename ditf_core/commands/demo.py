"""``python -m ditf_core demo [--model PATH] [--out ditf_demo]``: the whole pipeline on the bundled sample pair
(default model: the tiny RANDOM-weight demo DiT, so it runs anywhere with no download). See the README for the
files it writes."""

from __future__ import annotations

from ..cli_args import add_extract_arguments, add_model_arguments, add_output_argument, model_banner
from ..cli_checks import check_extract_options, load_planned, plan_model
from ..outputs import OutputFolder
from ..samples import SCENE_SIZE

NAME = "demo"


def add_command(commands) -> None:
    parser = commands.add_parser(NAME, help="the whole pipeline on the bundled sample images (default: demo DiT)",
                                 description=__doc__)
    add_output_argument(parser, "ditf_demo")
    add_model_arguments(parser, load_blocks=False)  # the demo sweeps every block
    add_extract_arguments(parser)
    parser.set_defaults(run=run)


def run(args, progress) -> int:
    from ..demo import run_demo_pipeline

    plan = plan_model(args, demo_by_default=True)
    options = check_extract_options(args, plan, [SCENE_SIZE])
    with OutputFolder(args.out, NAME, note=progress.note) as folder:
        pipeline = load_planned(plan)
        print(model_banner(pipeline))
        summary = run_demo_pipeline(pipeline, folder.path, options, progress=progress.bar, shown_as=args.out)
    print(summary)
    return 0
