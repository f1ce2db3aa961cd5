"""The commands of ``python -m ditf_core``, one module each, each with ``add_command`` (see :mod:`ditf_core.cli`)."""
