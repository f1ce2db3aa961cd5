"""The command line: extract and demo write what they promise; bad input exits 2 with a message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ditf_core import DiTFeatures
from ditf_core.cli import main
from ditf_core.samples import sample_scene

FAST = ["--ensemble", "2", "--resolution", "128"]
DEMO = ["--demo", *FAST]


def test_extract_writes_features_and_previews(tmp_path, capsys):
    paths = []
    for name, size in (("a", (120, 80)), ("b", (90, 90))):
        paths.append(tmp_path / f"{name}.png")
        sample_scene(size=size).save(paths[-1])
    assert main(["extract", *map(str, paths), "--out", str(tmp_path / "out"), *DEMO]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out
    features = DiTFeatures.load(tmp_path / "out" / "a.safetensors")
    assert features.features.shape == (1, 64, 5, 8)
    assert features.settings["ensemble"] == 2
    preview = Image.open(tmp_path / "out" / "b_pca.png")
    assert preview.size == (90, 90)
    assert np.asarray(preview).std() > 10  # not blank


def test_demo_writes_pictures_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out
    assert "discarded in mode ditf: [" in out and "channels for discard: " in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(summary["settings"]["massive_channels"]) == [13, 41]
    assert set(summary["matching"]) >= {"fast", "exact", "confident_cells"}
    assert 0.0 <= summary["matching"]["exact"]["pck@0.10"] <= 1.0
    report = json.loads((tmp_path / "inspect" / "report.json").read_text())
    assert report["sweep"]["massive_layers"] == [2, 3, 4, 5]  # planted after block 1 of 6
    for name in ("pca_modes.png", "matches.png", "warps.png", "inspect/sweep.png"):
        picture = Image.open(tmp_path / name)
        assert picture.width >= 384 and np.asarray(picture).std() > 10, name
    for name in ("scene_a.png", "scene_b.png", "features_a.safetensors", "features_b.safetensors", "summary.txt"):
        assert (tmp_path / name).is_file()


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "missing.png"), "--out", str(tmp_path), *DEMO]) == 2
    assert "no image file at" in capsys.readouterr().err
    image = tmp_path / "a.png"
    sample_scene(size=(64, 64)).save(image)
    assert main(["extract", str(image), "--layer", "99", *DEMO]) == 2
    assert "use 0..5" in capsys.readouterr().err
    assert main(["extract", str(image), *FAST]) == 2  # never random weights by accident
    assert "no model: give --model PATH" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point_runs():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "ditf_core", "--help"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0 and "extract" in result.stdout and "demo" in result.stdout
