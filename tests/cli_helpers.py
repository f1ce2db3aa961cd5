"""Shared by the command-line tests: a CLI run that must be refused with one ``error:`` line before any model loads."""

from __future__ import annotations

import pytest

from ditf_core import DiTFPipeline
from ditf_core.cli import main
from ditf_core.samples import sample_scene


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


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    """Loading a model fails the test (autouse where imported): every mistake must be caught before."""
    forbid_model_loading(monkeypatch)


@pytest.fixture
def image(tmp_path):
    """A 96x64 sample scene as a PNG file."""
    path = tmp_path / "scene.png"
    sample_scene(size=(96, 64)).save(path)
    return path
