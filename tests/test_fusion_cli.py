"""The command line with DINOv2 fusion and co-segmentation: ``extract --dino`` (one PCA over the run), the
evaluation's ``--dino`` on all three benchmark layouts (own cache entries), ``cosegment`` on feature files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import forbid_model_loading, refused
from PIL import Image
from test_eval import FakePipeline, assert_summary, make_ap10k, make_pfpascal, make_spair
from test_cli import files_in, readme_files
from test_fusion_dino import tiny_dinov2

from ditf_core import DiTFeatures, DiTFPipeline
from ditf_core.cli import main
from ditf_core.matching.checks import check_pair
from ditf_core.outputs import is_complete

DEMO = ["--demo", "--ensemble", "1", "--resolution", "128"]


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2-tiny")
    tiny_dinov2().save_pretrained(str(folder), safe_serialization=True)
    return folder


# --- extract --dino ------------------------------------------------------------------------------------------------
def test_extract_fuses_every_image_with_one_pca(tmp_path, images, dino_folder, capsys):
    out = tmp_path / "out"
    argv = ["extract", *map(str, images), "--out", str(out), *DEMO, "--dino", str(dino_folder),
            "--dino-resolution", "56", "--dino-pca", "6"]
    assert main(argv) == 0
    assert "fused with DINOv2 32-wide: [1, 38, 5, 8] per image" in capsys.readouterr().out
    a, b = (DiTFeatures.load(out / f"{name}.safetensors") for name in ("a", "b"))
    assert a.features.shape == (1, 6 + 32, 5, 8) and b.features.shape == (1, 6 + 32, 8, 8)
    fusion = a.settings["fusion"]
    assert fusion["pca"]["dims"] == 6 and fusion["dino_resolution"] == 56 and fusion == b.settings["fusion"]
    check_pair(a, b)  # one fit over the run: the two files can be matched
    assert Image.open(out / "b_pca.png").size == (90, 90)


def test_dino_mistakes_are_refused_before_any_model_loads(tmp_path, images, dino_folder, capsys, monkeypatch):
    forbid_model_loading(monkeypatch)
    extract = ["extract", images[0], *DEMO]
    refused([*extract, "--dit-weight", "0.3"], capsys, "--dit-weight: only used with --dino PATH")
    refused([*extract, "--dino-pca", "4"], capsys, "--dino-pca: only used with --dino PATH")
    refused([*extract, "--dino", tmp_path / "none"], capsys, "not a transformers model folder")
    refused([*extract, "--dino", tmp_path, "--dit-weight", "nan"], capsys,
            "--dit-weight: dit_weight must be a number in [0, 1]")
    refused([*extract, "--dino", dino_folder, "--dino-resolution", "5"], capsys, "--dino-resolution: the DINOv2 "
            "resolution must be a whole number of pixels in [14, 4096]")
    # the demo DiT has 64 channels; one 120 x 80 image at 128 px is 8 x 5 = 40 cells
    refused([*extract, "--dino", dino_folder, "--dino-pca", "40"], capsys, "--dino-pca must be between 0 (off) "
            "and 39 here", "fewer than the 40 feature cells")
    refused([*extract, "--dino", dino_folder, "--dino-pca", "-1"], capsys, "--dino-pca must be between 0")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    refused([*extract, "--dino", broken], capsys, "config.json is not a readable JSON file")
    (broken / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    refused([*extract, "--dino", broken], capsys, "holds a clip_vision_model; fusion needs a DINOv2")
    (broken / "config.json").write_text((dino_folder / "config.json").read_text())
    refused([*extract, "--dino", broken], capsys, "has no .safetensors weights")
    weights = next(dino_folder.glob("*.safetensors"))
    (broken / weights.name).write_bytes(weights.read_bytes()[:200])
    refused([*extract, "--dino", broken], capsys, "the DINOv2 weights file", "is not a readable .safetensors file")
    spair = make_spair(tmp_path / "spair")
    refused(["eval", "spair", spair, "--demo", "--dino", broken], capsys, "is not a readable .safetensors file")
    refused(["eval", "spair", spair, "--demo", "--dit-weight", "0.2"], capsys, "only used with --dino")


# --- the evaluation with --dino (FakePipeline: synthetic features whose PCK is known by hand) ------------------------
@pytest.mark.parametrize("layout", ["spair", "pfpascal", "ap10k"])
def test_eval_fuses_with_dino_and_caches_fused_features_apart(tmp_path, monkeypatch, dino_folder, layout, capsys):
    import ditf_core.eval.__main__ as cli

    pipeline = FakePipeline()
    monkeypatch.setattr(DiTFPipeline, "demo", classmethod(lambda cls, **options: pipeline))
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
    with pytest.raises(SystemExit):
        cli.main([layout, "--help"])
    assert "--dino-resolution" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # cached per image: no PCA fitted per pair
        cli.main([*base, "--dino-pca", "4"])
    assert "unrecognized arguments: --dino-pca 4" in capsys.readouterr().err


# --- cosegment -----------------------------------------------------------------------------------------------------
@pytest.fixture
def feature_files(tmp_path, images):
    features = tmp_path / "features"
    assert main(["extract", *map(str, images), "--out", str(features), *DEMO]) == 0
    return [features / f"{name}.safetensors" for name in ("a", "b")]


def test_cosegment_writes_what_the_readme_lists(tmp_path, images, feature_files, capsys):
    out = tmp_path / "segments"
    assert main(["cosegment", *map(str, feature_files), "-k", "3", "--images", *map(str, images), "--out",
                 str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("2 images, 3 clusters of ")
    listed = {name.replace("<name>", stem).replace("<j>", str(j))
              for name in readme_files("cosegment") for stem in ("a", "b") for j in range(3)}
    assert set(files_in(out)) == listed and is_complete(out)
    summary = json.loads((out / "cosegment.json").read_text())
    assert summary["clusters"] == 3 and sum(summary["sizes"]) == 5 * 8 + 8 * 8
    for name, size in (("a", (120, 80)), ("b", (90, 90))):
        assert Image.open(out / f"{name}_clusters.png").size == size
        masks = [np.asarray(Image.open(out / f"{name}_cluster{j}.png")) > 127 for j in range(3)]
        assert masks[0].shape == size[::-1] and (sum(m.astype(int) for m in masks) == 1).all()
    assert main(["cosegment", str(feature_files[0]), "-k", "2", "--out", str(out)]) == 0  # b's and a_cluster2 go
    assert not (out / "b_clusters.png").exists() and "removed 5 files of the previous run" in capsys.readouterr().err


def test_cosegment_mistakes(tmp_path, images, feature_files, capsys):
    a, b = feature_files
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((80, 120), 255, dtype=np.uint8)).save(mask)
    refused(["cosegment", a, b, "--foreground", mask, mask], capsys, "foreground[1] is 120x80 but must match")
    refused(["cosegment", a, "-k", "41"], capsys, "clusters=41 but there are only 40 feature cells")
    refused(["cosegment", a, "-k", "1"], capsys, "clusters must be a whole number in [2, 64]")
    refused(["cosegment", a, b, "--images", images[0]], capsys, "--images gives 1 file for 2 feature files")
    refused(["cosegment", a, b, "--images", *images[::-1]], capsys, "is 90x90 but its features come from a 120x80")
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    refused(["cosegment", a, "--images", text], capsys, "--images:", "notes.png is not an image PIL can read")
    refused(["cosegment", tmp_path / "none.safetensors"], capsys, "no feature file at")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(a.read_bytes()[:100])
    refused(["cosegment", cut], capsys, "cut.safetensors is not a readable feature file")
    refused(["cosegment", a, images[0]], capsys, "a.png is not a readable feature file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.safetensors").write_bytes(a.read_bytes())
    refused(["cosegment", a, other / "a.safetensors"], capsys, "would both write a_clusters.png")
    refused(["cosegment", a, "--iterations", "0"], capsys, "--iterations must be at least 1")
    refused(["cosegment", a, "--out", mask], capsys, "--out", "is a file, not a folder")
