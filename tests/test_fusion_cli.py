"""The command line with DINOv2 fusion and co-segmentation: ``extract --dino`` (one PCA over the run), the
evaluation's ``--dino`` on all three benchmark layouts (own cache entries), ``cosegment`` on feature files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval import FakePipeline, assert_summary, make_ap10k, make_pfpascal, make_spair
from test_fusion_dino import tiny_dinov2

from ditf_core import DiTFeatures
from ditf_core.cli import main
from ditf_core.matching.checks import check_pair
from ditf_core.samples import sample_scene

DEMO = ["--demo", "--ensemble", "1", "--resolution", "128"]


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2-tiny")
    tiny_dinov2().save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture
def scenes(tmp_path):
    paths = []
    for name, size in (("a", (120, 80)), ("b", (90, 90))):
        paths.append(tmp_path / f"{name}.png")
        sample_scene(size=size).save(paths[-1])
    return paths


# --- extract --dino ------------------------------------------------------------------------------------------------
def test_extract_fuses_every_image_with_one_pca(tmp_path, scenes, dino_folder, capsys):
    out = tmp_path / "out"
    argv = ["extract", *map(str, scenes), "--out", str(out), *DEMO, "--dino", str(dino_folder),
            "--dino-resolution", "56", "--dino-pca", "6"]
    assert main(argv) == 0
    assert "fused with DINOv2 32-wide: [1, 38, 5, 8] per image" in capsys.readouterr().out
    a, b = (DiTFeatures.load(out / f"{name}.safetensors") for name in ("a", "b"))
    assert a.features.shape == (1, 6 + 32, 5, 8) and b.features.shape == (1, 6 + 32, 8, 8)
    fusion = a.settings["fusion"]
    assert fusion["pca"]["dims"] == 6 and fusion["dino_resolution"] == 56 and fusion == b.settings["fusion"]
    check_pair(a, b)  # one fit over the run: the two files can be matched
    assert Image.open(out / "b_pca.png").size == (90, 90)


def test_dino_options_need_dino_and_a_dinov2_folder(tmp_path, scenes, capsys):
    assert main(["extract", str(scenes[0]), "--out", str(tmp_path), *DEMO, "--dit-weight", "0.3"]) == 2
    assert "--dit-weight: only used with --dino PATH" in capsys.readouterr().err
    assert main(["extract", str(scenes[0]), "--out", str(tmp_path), *DEMO, "--dino", str(tmp_path / "none")]) == 2
    assert "not a transformers model folder" in capsys.readouterr().err
    assert main(["extract", str(scenes[0]), "--out", str(tmp_path), *DEMO, "--dino", str(tmp_path),
                 "--dit-weight", "nan"]) == 2
    assert "dit_weight must be a number in [0, 1]" in capsys.readouterr().err


# --- the evaluation with --dino (FakePipeline: synthetic features whose PCK is known by hand) ------------------------
@pytest.mark.parametrize("layout", ["spair", "pfpascal", "ap10k"])
def test_eval_fuses_with_dino_and_caches_fused_features_apart(tmp_path, monkeypatch, dino_folder, layout):
    import ditf_core.eval.__main__ as cli

    pipeline = FakePipeline()
    monkeypatch.setattr(cli, "load_from_args", lambda args: pipeline)
    make = {"spair": make_spair, "pfpascal": make_pfpascal, "ap10k": make_ap10k}[layout]
    root = make(tmp_path / layout)
    base = [layout, str(root), "--demo", "--cache", str(tmp_path / "cache"), "--quiet", "--dino", str(dino_folder),
            "--dino-resolution", "56"]
    # DiTF weight 1: the DINOv2 part is zero, so the fused features score exactly what DiTF alone scores
    output = tmp_path / "alone.json"
    assert cli.main([*base, "--dit-weight", "1.0", "--output", str(output)]) == 0
    assert_summary(json.loads(output.read_text())["summary"])
    assert json.loads(output.read_text())["settings"]["fusion"]["dit_weight"] == 1.0
    calls = pipeline.extractor.calls
    assert cli.main([*base, "--output", str(tmp_path / "fused.json")]) == 0  # another weight: other cache entries
    assert pipeline.extractor.calls == 2 * calls
    cached = list((tmp_path / "cache").rglob("*.safetensors"))
    assert {DiTFeatures.load(path).settings["fusion"]["dit_weight"] for path in cached} == {1.0, 0.5}
    assert "--dino-pca" not in cli.build_parser().format_help()  # cached per image: no PCA fitted per pair


# --- cosegment -----------------------------------------------------------------------------------------------------
def test_cosegment_writes_masks_previews_and_a_summary(tmp_path, scenes, capsys):
    features = tmp_path / "features"
    assert main(["extract", *map(str, scenes), "--out", str(features), *DEMO]) == 0
    files = [str(features / f"{name}.safetensors") for name in ("a", "b")]
    out = tmp_path / "segments"
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((80, 120), 255, dtype=np.uint8)).save(mask)
    argv = ["cosegment", *files, "-k", "3", "--images", *map(str, scenes), "--out", str(out)]
    assert main([*argv, "--foreground", str(mask), str(mask)]) == 2  # the b mask has the wrong size
    assert "foreground[1] is 120x80 but must match" in capsys.readouterr().err
    assert main(argv) == 0
    summary = json.loads((out / "cosegment.json").read_text())
    assert summary["clusters"] == 3 and sum(summary["sizes"]) == 5 * 8 + 8 * 8
    for name, size in (("a", (120, 80)), ("b", (90, 90))):
        assert Image.open(out / f"{name}_clusters.png").size == size
        masks = [np.asarray(Image.open(out / f"{name}_cluster{j}.png")) > 127 for j in range(3)]
        assert masks[0].shape == size[::-1] and (sum(m.astype(int) for m in masks) == 1).all()
    assert main(["cosegment", files[0], "-k", "41", "--out", str(out)]) == 2
    assert "clusters=41 but there are only 40 feature cells" in capsys.readouterr().err
    assert main(["cosegment", *files, "--images", str(scenes[0]), "--out", str(out)]) == 2
    assert "--images gives 1 files for 2 feature files" in capsys.readouterr().err
    assert main(["cosegment", *files, "--images", *map(str, scenes[::-1]), "--out", str(out)]) == 2
    assert "is 90x90 but its features come from a 120x80 image" in capsys.readouterr().err
