"""Command line: ``python -m ditf_core COMMAND ...`` with the commands listed in :data:`COMMANDS`.

``demo`` is the quick start: without ``--model`` it runs on the built-in tiny demo DiT (RANDOM weights, two
planted massive channels), so it works anywhere with no download.

Adding a command
----------------
A command lives in its own module (any package) that defines ``add_command(commands)``: it adds its parser with
``commands.add_parser(NAME, help=..., description=...)``, its options (the shared groups are in
:mod:`ditf_core.cli_args`: ``add_model_arguments``, ``add_extract_arguments``, ``add_output_argument`` ...) and
``parser.set_defaults(run=run)``, where ``run(args, progress) -> int`` does the work. Import the module here and
add it to :data:`COMMANDS`. Its ``run``:

1. checks everything cheap BEFORE loading a model (:mod:`ditf_core.cli_checks`: ``check_images``, ``plan_model``,
   ``check_extract_options``, ``parse_layers`` ...); a problem is a ``DiTFInputError`` whose message names the
   option and the fix;
2. writes a folder of outputs inside ``with OutputFolder(args.out, NAME, note=progress.note) as folder:``, into
   ``folder.path``, with the atomic writers of :mod:`ditf_core.outputs` (``save_image``, ``write_json``,
   ``DiTFeatures.save`` ...): the folder then never shows half a run, and a rerun knows an interrupted one;
3. loads the model (``load_planned(plan)``) only inside that block, reports transformer passes through
   ``progress.bar(label)`` and notes through ``progress.note(text)``, and returns 0.

:func:`main` turns a ``DiTFInputError`` (or another ValueError, TypeError, OSError) into one ``error:`` line and
exit code 2, a bad option into one ``error:`` line and exit code 2 too, and Ctrl-C into one line and exit code 130.
"""

from __future__ import annotations

import sys

from .cli_args import ArgumentParser, Progress
from .commands import cosegment, demo, evaluate, extract, extract_dataset, inspect, propagate, track, tune
from .errors import DiTFInputError

COMMANDS = (extract, extract_dataset, inspect, demo, evaluate, propagate, track, cosegment, tune)
USER_ERRORS = (DiTFInputError, ValueError, TypeError, OSError)
INTERRUPTED = "interrupted: stopped before finishing; nothing half-written is left, an output folder keeps what it held"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = Progress()
    try:
        return args.run(args, progress)
    except KeyboardInterrupt:
        progress.end_line()
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        progress.end_line()
        print(f"error: {' '.join(str(error).split()) or type(error).__name__}", file=sys.stderr)
        return 2


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m ditf_core", description="DiTF: features from Diffusion Transformers")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_command(commands)
    return parser
