"""``python -m ditf_core``: see :mod:`ditf_core.cli`."""

import sys

from .cli import main

sys.exit(main())
