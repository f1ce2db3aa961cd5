"""``extract-dataset`` as a user meets it: it fills the store the evaluation reads (fused features apart), checks
before loading, and torchrun is refused where it does not apply."""

from __future__ import annotations

import json

import pytest
from cli_helpers import forbid_model_loading, refused
from PIL import Image
from test_eval import FakePipeline, make_spair
from test_fusion_dino import tiny_dinov2

from ditf_core import DiTFPipeline
from ditf_core.cli import main


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """The options of a fusion with a tiny random DINOv2."""
    folder = tmp_path_factory.mktemp("dinov2-tiny")
    tiny_dinov2().save_pretrained(str(folder), safe_serialization=True)
    return ["--dino", str(folder), "--dino-resolution", "56"]


@pytest.fixture
def fake(monkeypatch):
    pipeline = FakePipeline()
    monkeypatch.setattr(DiTFPipeline, "demo", classmethod(lambda cls, **options: pipeline))
    return pipeline


@pytest.mark.parametrize("fused", [False, True])
def test_the_evaluation_reads_what_extract_dataset_stored(tmp_path, fake, dino, fused, capsys):
    root = make_spair(tmp_path / "spair")
    cache = tmp_path / "cache"
    fusion, other = (dino, []) if fused else ([], dino)
    argv = ["extract-dataset", str(root / "JPEGImages"), "--out", str(cache), "--demo", "--quiet", *fusion]
    assert main([*argv, "--summary", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["extracted"] == fake.extractor.calls == 6 and json.loads(capsys.readouterr().out) == summary
    output = tmp_path / "result.json"
    assert main(["eval", "spair", str(root), "--demo", "--cache", str(cache), "--quiet", "--output", str(output),
                 *fusion]) == 0
    assert fake.extractor.calls == 6  # every image came from the store
    result = json.loads(output.read_text())
    assert result["features"] == {"extracted": 0, "cached": 6} and ("fusion" in result["settings"]) == fused
    # fused and unfused features are stored apart: the other kind is extracted again
    assert main(["eval", "spair", str(root), "--demo", "--cache", str(cache), "--quiet", *other]) == 0
    assert fake.extractor.calls == 12


def test_extract_dataset_mistakes_are_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    forbid_model_loading(monkeypatch)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 48)).save(images / "a.png")
    run = ["extract-dataset", images, "--demo"]
    refused(["extract-dataset", tmp_path / "none", "--demo"], capsys, "SOURCE", "does not exist")
    refused([*run, "--out", images / "a.png"], capsys, "--out", "is a file, not a folder")
    refused([*run, "--summary", images], capsys, "--summary", "is a folder")
    refused([*run, "--layer", "99"], capsys, "--layer", "out of range")
    refused([*run, "--dit-weight", "0.3"], capsys, "--dit-weight: only used with --dino PATH")
    refused(["extract-dataset", images], capsys, "no model: give --model PATH")
    (images / "b.jpg").write_text("not a picture")
    refused([*run], capsys, "b.jpg is not an image PIL can read")


def test_torchrun_is_refused_where_it_does_not_apply(tmp_path, capsys, monkeypatch):
    forbid_model_loading(monkeypatch)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    refused(["eval", "davis", tmp_path, "--demo"], capsys, "eval davis runs in one process", "(2 ranks here)")
    refused(["eval", "tapvid", tmp_path / "tapvid_davis.pkl", "--demo"], capsys, "eval tapvid runs in one process")
    refused(["eval", "spair", make_spair(tmp_path / "spair"), "--demo", "--no-cache"], capsys,
            "under torchrun", "drop --no-cache")
