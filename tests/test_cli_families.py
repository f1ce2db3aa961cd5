"""Issue 12 on the command line: every family's model files go through the pre-load planning (structure on the meta
device, VAE fit, layers, resolution within the position embeddings, prompts), and ``tune`` reports its mistakes
before any model loads. The model loaders are replaced by a function that fails the test."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from cli_helpers import image, no_model_load, refused  # noqa: F401 (fixtures: no model loads here)
from safetensors.torch import save_file
from test_families_loading import VAES, write_pipeline_folder

from ditf_core.demo_model import build_tiny_family, build_tiny_vae
from ditf_core.samples import sample_scene

FAMILIES = ["flux2", "chroma", "qwen_image", "lumina2", "z_image", "hidream", "pixart", "auraflow", "wan"]
DEMO = ["--demo", "--ensemble", "1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A diffusers pipeline folder (transformer + its VAE) of every tiny family; Chroma's also has a text_encoder/."""
    root = tmp_path_factory.mktemp("families")
    found = {}
    for name in FAMILIES:
        found[name] = root / name
        write_pipeline_folder(found[name], build_tiny_family(name), build_tiny_vae(kind=VAES.get(name, "kl16")))
    (found["chroma"] / "text_encoder").mkdir()
    return found


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_planned_before_loading(folders, image, capsys, name):
    folder = folders[name]
    if name == "wan" and importlib.util.find_spec("accelerate") is None:
        refused(["extract", image, "--model", folder], capsys, "only with the `accelerate` package")
        return
    line = refused(["extract", image, "--model", folder, "--layer", "999"], capsys, "--layer", "family default (")
    assert "999" in line
    refused(["tune", image, "--model", folder, "--layers", "0,999"], capsys, "--layers", "999")


def test_resolution_beyond_a_familys_position_embeddings(folders, image, capsys):
    # the tiny AuraFlow has position embeddings for 32x32 tokens (512 px)
    refused(["extract", image, "--model", folders["auraflow"], "--resolution", "1024"], capsys, "--resolution",
            "position embeddings for at most 32x32 tokens")


def test_a_vae_of_another_latent_space_is_refused_before_loading(folders, image, capsys):
    refused(["extract", image, "--model", folders["pixart"], "--vae", folders["chroma"] / "vae"], capsys,
            "the VAE at", "16-channel latents", "PixArt", "use the model's own VAE")


def test_a_single_file_vae_without_a_preset_is_refused_before_loading(folders, image, tmp_path, capsys):
    vae = tmp_path / "vae.safetensors"
    save_file({"x": torch.zeros(1)}, str(vae))
    refused(["extract", image, "--model", folders["flux2"] / "transformer", "--vae", vae], capsys, "vae.safetensors",
            "give the diffusers VAE folder")


def test_a_prompt_for_a_family_ditf_does_not_encode_is_refused(folders, image, capsys):
    refused(["extract", image, "--model", folders["chroma"], "--prompt", "a cat"], capsys, "--prompt",
            "encodes prompts only for flux and sd3", "Chroma")


@pytest.mark.parametrize("options, expected", [
    (["--t", "0.2,1.0"], ("--t:", "strictly between")),
    (["--t", "early"], ("--t takes comma-separated numbers",)),
    (["--t", ","], ("--t:", "at least one t")),
    (["--warps", "0"], ("--warps must be at least 1",)),
    (["--ensemble", "0"], ("--ensemble must be at least 1",)),
    (["--layers", "99"], ("--layers", "99")),
    (["--resolution", "8"], ("--resolution must be between",)),
    (["--resolution", "48"], ("scene.png", "feature cells", "higher resolution")),
])
def test_tune_mistakes_are_found_before_loading(image, capsys, options, expected):
    refused(["tune", image, *DEMO, *options], capsys, *expected)


def test_tune_refuses_an_image_too_small_to_score(tmp_path, capsys):
    small = tmp_path / "small.png"
    sample_scene(size=(24, 20)).save(small)
    refused(["tune", small, *DEMO], capsys, "small.png", "24x20 px", "at least 32 px")


def test_tune_writes_through_the_output_folder(tmp_path, image, capsys, monkeypatch):
    monkeypatch.undo()  # this one loads the demo DiT
    from ditf_core.cli import main

    out = tmp_path / "out"
    assert main(["tune", str(image), *DEMO, "--t", "0.3", "--warps", "1", "--resolution", "96", "--layers", "0,2",
                 "--out", str(out)]) == 0
    marker = json.loads((out / "ditf_run.json").read_text())
    assert marker["status"] == "complete" and sorted(marker["files"]) == ["tune.json", "tune.png"]
    assert json.loads((out / "tune.json").read_text())["layers"] == [0, 2]
