"""The command line: each command writes what it promises (and the README lists), atomically, group-readable;
Ctrl-C exits 130 and leaves the output folder as it was; reruns replace stale files and report interrupted runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditf_core import DiTFeatures, DiTFPipeline
from ditf_core.cli import INTERRUPTED, main
from ditf_core.outputs import MARKER, is_complete

FAST = ["--ensemble", "2", "--resolution", "128"]
DEMO = ["--demo", *FAST]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def group_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_extract_writes_features_previews_and_marker(tmp_path, images, capsys, group_umask):
    out = tmp_path / "out"
    assert main(["extract", *map(str, images), "--out", str(out), *DEMO]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "wrote 2 feature files and 2 PCA previews" in printed
    assert sorted(files_in(out)) == ["a.safetensors", "a_pca.png", "b.safetensors", "b_pca.png", MARKER]
    features = DiTFeatures.load(out / "a.safetensors")
    assert features.features.shape == (1, 64, 5, 8)
    assert features.settings["ensemble"] == 2 and features.settings["layer"] == 3  # -1: the family default
    preview = Image.open(out / "b_pca.png")
    assert preview.size == (90, 90) and np.asarray(preview).std() > 10  # not blank
    marker = json.loads((out / MARKER).read_text())
    assert marker["status"] == "complete" and marker["command"] == "extract" and is_complete(out)
    for path in out.iterdir():  # group-readable like any file the user writes (tempfile would give 0600)
        assert path.stat().st_mode & 0o777 == 0o644, path.name


def test_extract_one_image_says_so_in_the_singular(tmp_path, images, capsys):
    assert main(["extract", str(images[0]), "--out", str(tmp_path / "out"), *DEMO]) == 0
    assert "wrote 1 feature file and 1 PCA preview to" in capsys.readouterr().out


def test_a_rerun_removes_the_previous_runs_stale_files(tmp_path, images, capsys):
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("the user's own file\n")
    assert main(["extract", *map(str, images), "--out", str(out), *DEMO]) == 0
    assert "already holds files that no earlier run of this tool listed" in capsys.readouterr().err
    assert main(["extract", str(images[0]), "--out", str(out), *DEMO]) == 0
    err = capsys.readouterr().err
    assert "removed 2 files of the previous run that this run did not write: b.safetensors, b_pca.png" in err
    assert sorted(files_in(out)) == ["a.safetensors", "a_pca.png", MARKER, "mine/notes.txt"]


def test_ctrl_c_exits_130_and_leaves_the_folder_as_it_was(tmp_path, images, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["extract", *map(str, images), "--out", str(out), *DEMO]) == 0
    before = files_in(out)
    capsys.readouterr()
    real_extract, calls = DiTFPipeline.extract, []

    def interrupted_on_the_second_image(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first image's features are written by now
            raise KeyboardInterrupt
        return real_extract(self, *args, **kwargs)

    monkeypatch.setattr(DiTFPipeline, "extract", interrupted_on_the_second_image)
    assert main(["extract", *map(str, images), "--out", str(out), "--demo", "--ensemble", "1", "--resolution",
                 "64"]) == 130
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.strip() and not line.startswith("  ")]  # not progress
    assert messages == [INTERRUPTED] and INTERRUPTED.startswith("interrupted: ") and "Traceback" not in err
    assert files_in(out) == before  # the previous complete run, byte for byte; nothing half-written
    fresh = tmp_path / "fresh"
    calls.clear()
    assert main(["extract", *map(str, images), "--out", str(fresh), *DEMO]) == 130
    assert not fresh.exists()


def test_a_rerun_reports_and_cleans_a_killed_run(tmp_path, images, capsys):
    out = tmp_path / "out"
    assert main(["extract", str(images[0]), "--out", str(out), *DEMO]) == 0
    staging = out / ".ditf-partial-dead"  # what a killed process (kill -9, power cut) leaves behind
    staging.mkdir()
    (staging / "a.safetensors").write_bytes(b"half")
    (out / MARKER).write_text(json.dumps({"command": "extract", "status": "replacing",
                                          "files": ["a.safetensors", "a_pca.png", "b.safetensors"]}))
    assert not is_complete(out)
    capsys.readouterr()
    assert main(["extract", str(images[0]), "--out", str(out), *DEMO]) == 0
    assert f"note: a previous run into {out} was interrupted before it finished" in capsys.readouterr().err
    assert sorted(files_in(out)) == ["a.safetensors", "a_pca.png", MARKER] and is_complete(out)


def test_demo_writes_every_file_the_readme_lists(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out
    assert "discarded in mode ditf: [" in out and "channels for discard: " in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["settings"]["massive_channels"]) == [13, 41]
    assert summary["settings"]["prompt"] == "" and "zero conditioning" in summary["settings"]["model"]["text"]
    assert set(summary["matching"]) >= {"fast", "exact", "confident_cells"}
    assert 0.0 <= summary["matching"]["exact"]["pck@0.10"] <= 1.0
    report = json.loads((tmp_path / "inspect" / "report.json").read_text())
    assert report["sweep"]["massive_layers"] == [2, 3, 4, 5]  # planted after block 1 of 6
    assert report["settings"]["prompt"] == ""
    written = set(files_in(tmp_path))
    assert written == set(readme_files("demo")) | {"inspect/" + name for name in report["figures"]}
    for name in ("pca_modes.png", "matches.png", "warps.png", "inspect/sweep.png"):
        picture = Image.open(tmp_path / name)
        assert picture.width >= 384 and np.asarray(picture).std() > 10, name


def test_extract_and_inspect_write_what_the_readme_lists(tmp_path, images):
    assert main(["extract", str(images[0]), "--out", str(tmp_path / "x"), *DEMO]) == 0
    listed = {name.replace("<name>", "a") for name in readme_files("extract")}
    assert set(files_in(tmp_path / "x")) == listed
    assert main(["inspect", "--out", str(tmp_path / "i"), "--layers=-1,4", "--demo", "--ensemble", "1",
                 "--resolution", "96"]) == 0
    listed = {name.replace("{k}", str(k)) for name in readme_files("inspect") for k in (3, 4)}
    assert set(files_in(tmp_path / "i")) == listed


def readme_files(command: str) -> list[str]:
    """The files the README's command-line section says ``command`` writes (the ``writes:`` line of its table)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(f"| `{command}` |"):
            return [part.strip("` ") for part in line.split("|")[3].split(",") if part.strip()]
    raise AssertionError(f"the README lists no files for {command}")


def test_eval_is_a_subcommand_too(tmp_path):
    for command in (["-m", "ditf_core", "eval", "--help"], ["-m", "ditf_core.eval", "--help"]):
        done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "PCK of DiTF keypoint transfer" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "ditf_core", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and all(name in done.stdout for name in ("extract", "inspect", "demo", "eval"))
