"""Shared by the command-line tests: a CLI run that must be refused with one ``error:`` line before any model loads."""

from __future__ import annotations

from ditf_core import DiTFPipeline
from ditf_core.cli import main


def forbid_model_loading(monkeypatch) -> None:
    """Loading a model fails the test: a check that comes after the (slow) load shows up as a failure."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(DiTFPipeline, "demo", classmethod(loaded))
    monkeypatch.setattr(DiTFPipeline, "from_files", classmethod(loaded))


def refused(argv, capsys, *expected: str) -> str:
    """Run the CLI, check exit code 2 and a single ``error:`` line containing every ``expected`` text."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]
