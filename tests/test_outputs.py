"""Atomic writes, file permissions and output folders (ditf_core.outputs), and records that say only what was used."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from ditf_core import DiTFeatures, DiTFInputError, DiTFPipeline, PixelMapping
from ditf_core.conditioning import FixedPromptEncoder
from ditf_core.outputs import MARKER, OutputFolder, atomic_path, is_complete, save_image, write_json, write_text
from ditf_core.samples import sample_scene


@pytest.fixture
def group_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize("interruption", [ValueError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, interruption):
    target = write_text(tmp_path / "report.json", "old\n")
    with pytest.raises(type(interruption)):
        with atomic_path(target) as temporary:
            temporary.write_text("half of the new cont")
            raise interruption
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_writers_give_group_readable_files(tmp_path, group_umask):
    features = DiTFeatures(torch.zeros(1, 4, 2, 3), PixelMapping((48, 32), (48, 32), (3, 2)))
    written = [
        features.save(tmp_path / "f.safetensors"),  # safetensors itself creates files as 0600
        save_image(Image.new("RGB", (4, 4)), tmp_path / "p.png"),
        write_json(tmp_path / "r.json", {"a": 1}),
    ]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o644, path.name
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1} and leftovers(tmp_path) == []
    assert Image.open(tmp_path / "p.png").size == (4, 4)  # the format comes from the real suffix


def test_output_folder_commits_only_a_finished_run(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputFolder(out, "test") as folder:
            write_text(folder.path / "a.txt", "a")
            raise RuntimeError("the run failed")
    assert not out.exists()  # created by the run, removed with it
    with OutputFolder(out, "test") as folder:
        write_text(folder.path / "sub" / "a.txt", "a")
        assert not (out / "sub").exists()  # nothing shows before the run finishes
    assert (out / "sub" / "a.txt").read_text() == "a" and is_complete(out)
    assert json.loads((out / MARKER).read_text())["files"] == ["sub/a.txt"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_marker_never_removes_files_outside_its_folder(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "precious.txt"
    outside.write_text("keep")
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"status": "complete", "files": ["../precious.txt", str(outside)]}))
    notes = []
    with OutputFolder(out, "test", note=notes.append) as folder:
        write_text(folder.path / "a.txt", "a")
    assert outside.read_text() == "keep"


# --- records say only what was used --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    return DiTFPipeline.demo()


SMALL = dict(ensemble=1, resolution=64)


def test_a_prompt_that_would_be_ignored_is_refused(demo):
    image = sample_scene(size=(64, 64))
    with pytest.raises(DiTFInputError, match="prompt 'a cat' cannot be used: this pipeline has zero conditioning"):
        demo.extract(image, prompt="a cat", **SMALL)
    fixed = DiTFPipeline(demo.transformer, demo.vae, FixedPromptEncoder(torch.zeros(1, 4, 32), torch.zeros(1, 32)))
    with pytest.raises(DiTFInputError, match="fixed precomputed conditioning"):
        fixed.extract(image, prompt="a cat", **SMALL)
    with pytest.raises(DiTFInputError, match="cannot be used"):
        demo.capture(image, prompt="a cat", **SMALL)


def test_records_name_the_conditioning_really_used(demo):
    from ditf_core.inspect import inspect_pipeline

    image = sample_scene(size=(64, 64))
    features = demo.extract(image, prompt="   ", **SMALL)  # blank: zero conditioning, recorded as no prompt
    assert features.settings["prompt"] == "" and features.settings["model"]["text"].startswith("zero conditioning")
    report = inspect_pipeline(demo, [image], sweep=False, plots=False, **SMALL).report
    assert report["settings"]["prompt"] == "" and report["model"]["text"].startswith("zero conditioning")
