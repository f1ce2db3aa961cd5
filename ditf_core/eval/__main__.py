"""``python -m ditf_core.eval ...``: the same as ``python -m ditf_core eval ...`` (see
:mod:`ditf_core.commands.evaluate`)."""

from __future__ import annotations

import sys

from ..cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
