"""Every user mistake on the command line ends in ONE ``error:`` line and exit code 2, found BEFORE any model loads.

The model loaders are replaced by a function that fails the test, so a check that comes after the (slow) load
shows up as a test failure, not a pass.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from cli_helpers import forbid_model_loading, refused
from PIL import Image
from safetensors.torch import save_file

from ditf_core.cli import build_parser, main
from ditf_core.cli_args import extract_kwargs
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae
from ditf_core.samples import sample_scene

DEMO = ["--demo", "--ensemble", "1", "--resolution", "64"]


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    """Loading a model fails the test: every mistake here must be caught before."""
    forbid_model_loading(monkeypatch)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "scene.png"
    sample_scene(size=(96, 64)).save(path)
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny Flux as a diffusers pipeline folder, and its transformer and VAE as single .safetensors files."""
    root = tmp_path_factory.mktemp("models")
    transformer, vae = build_tiny_flux(), build_tiny_vae()
    folder = root / "tiny-flux"
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    save_file(transformer.state_dict(), str(root / "transformer.safetensors"))
    save_file(vae.state_dict(), str(root / "vae.safetensors"))
    sd3 = root / "tiny-sd3"
    build_tiny_sd3().save_pretrained(sd3 / "transformer")
    vae.save_pretrained(sd3 / "vae")
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    return root


def damaged(path, tmp_path, content: bytes | None = None):
    """A copy of ``path`` cut in half (or replaced by ``content``)."""
    copy = tmp_path / path.name
    data = path.read_bytes()
    copy.write_bytes(data[: len(data) // 2] if content is None else content)
    return copy


# --- images ------------------------------------------------------------------------------------------------------
def test_missing_corrupt_and_text_images(tmp_path, image, capsys):
    refused(["extract", tmp_path / "missing.png", *DEMO], capsys, "no image file at", "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    refused(["extract", text, *DEMO], capsys, "notes.png is not an image PIL can read")
    cut = tmp_path / "cut.png"
    cut.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    refused(["extract", cut, *DEMO], capsys, "cut.png is not a readable image")
    refused(["inspect", image, text, *DEMO], capsys, "notes.png is not an image")
    refused(["extract", tmp_path, *DEMO], capsys, "no image file at", "(it is a folder)")


def test_decompression_bomb_is_refused_from_its_header(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(bomb)  # 72 megapixels in a few KB
    assert bomb.stat().st_size < 100_000
    line = refused(["extract", bomb, *DEMO], capsys, "bomb.png is 9000x8000 = 72 megapixels, more than the 64 "
                   "megapixels this tool decodes", "downscale it")
    assert "not a readable image" not in line  # the cap speaks for itself, not as a decoding error


def test_two_images_with_one_name(tmp_path, image, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(image, other / "scene.jpg")
    refused(["extract", image, other / "scene.jpg", *DEMO], capsys, "would both write scene.safetensors")


# --- settings against the model ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, expected", [
    (["--layer", "99"], ["--layer: layer 99 is out of range", "use 0..5", "-1 for the family default (3)"]),
    (["--discard", "13,abc"], ["--discard: discard must be 'auto', 'none' or comma-separated"]),
    (["--discard", "5000"], ["--discard: discard channel 5000 is out of range", "0..63"]),
    (["--resolution", "8"], ["--resolution must be between 16 and 4096 pixels", "got 8"]),
    (["--resolution", "5000"], ["--resolution must be between 16 and 4096"]),
    (["--t", "1.5"], ["--t: t must be a number strictly between 0 and 1"]),
    (["--ensemble", "0"], ["--ensemble must be at least 1, got 0"]),
    (["--micro-batch", "0"], ["--micro-batch must be at least 1"]),
    (["--seed", "-3"], ["--seed must be at least 0"]),
    (["--guidance", "nan"], ["--guidance must be a finite number"]),
    (["--prompt", "a cat"], ["--prompt needs the model's text encoders", "the demo DiT has none"]),
    (["--vae", "x"], ["--vae goes with --model"]),
    (["--model", "x"], ["either --model PATH or --demo, not both"]),
])
def test_settings_are_checked_against_the_model(image, capsys, options, expected):
    refused(["extract", image, *DEMO, *options], capsys, *expected)


def test_no_model_is_refused(image, capsys):
    refused(["extract", image], capsys, "no model: give --model PATH")


def test_inspect_options(tmp_path, image, capsys):
    refused(["inspect", image, *DEMO, "--layers", "3,x"], capsys, "--layers takes comma-separated block numbers")
    refused(["inspect", image, *DEMO, "--layers", "2,9"], capsys, "--layers: layer 9 is out of range")
    refused(["inspect", image, *DEMO, "--ratio", "0"], capsys, "--ratio must be a positive finite number")
    refused(["inspect", image, *DEMO, "--gate-k", "0"], capsys, "--gate-k must be between 1 and 64")
    cache_file = tmp_path / "cache"
    cache_file.write_text("")
    refused(["inspect", image, *DEMO, "--cache-dir", cache_file], capsys, "--cache-dir", "is a file, not a folder")


def test_layer_minus_one_is_the_family_default(image):
    args = build_parser().parse_args(["extract", str(image), "--demo", "--layer", "-1"])
    assert extract_kwargs(args)["layer"] is None  # the pipeline fills in the family default
    assert build_parser().parse_args(["extract", str(image), "--demo"]).layer == -1


# --- output folders ----------------------------------------------------------------------------------------------
def test_out_that_is_a_file(tmp_path, image, capsys):
    target = tmp_path / "result.txt"
    target.write_text("keep me\n")
    refused(["extract", image, *DEMO, "--out", target], capsys, "--out", "is a file, not a folder")
    assert target.read_text() == "keep me\n"
    refused(["extract", image, *DEMO, "--out", target / "sub"], capsys, "is a file, not a folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_out_that_is_not_writable(tmp_path, image, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(["extract", image, *DEMO, "--out", locked], capsys, "is not writable")
        refused(["extract", image, *DEMO, "--out", locked / "new"], capsys, "cannot be created")
    finally:
        locked.chmod(0o700)


def test_a_failed_check_leaves_no_output_folder(tmp_path, image, capsys):
    out = tmp_path / "deep" / "out"
    refused(["extract", image, *DEMO, "--layer", "99", "--out", out], capsys, "--layer")
    assert not (tmp_path / "deep").exists()


# --- devices -----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(image, capsys):
    refused(["extract", image, *DEMO, "--device", "cuda"], capsys, "--device cuda: this torch sees no CUDA GPU")


def test_unknown_device(image, capsys):
    refused(["extract", image, *DEMO, "--device", "gpu0"], capsys, "--device 'gpu0' is not a device name")


# --- model files -------------------------------------------------------------------------------------------------
def test_missing_model_files(tmp_path, image, model_files, capsys):
    refused(["extract", image, "--model", tmp_path / "FLUX.1-dev"], capsys, "--model", "does not exist")
    refused(["extract", image, "--model", model_files / "transformer.safetensors", "--config",
             model_files / "tiny-flux" / "transformer"], capsys, "holds only a transformer; also give its VAE")
    refused(["extract", image, "--model", model_files / "tiny-flux" / "transformer", "--vae", tmp_path / "vae"],
            capsys, "--vae", "does not exist")


def test_corrupt_transformer_vae_and_text_embeds(tmp_path, image, model_files, capsys):
    config = ["--config", model_files / "tiny-flux" / "transformer"]
    cut = damaged(model_files / "transformer.safetensors", tmp_path)
    refused(["extract", image, "--model", cut, "--vae", model_files / "vae.safetensors", *config], capsys,
            "the transformer file", "is not a readable .safetensors file")
    (tmp_path / "vae").mkdir()
    bad_vae = damaged(model_files / "vae.safetensors", tmp_path / "vae", b"not safetensors at all")
    refused(["extract", image, "--model", model_files / "transformer.safetensors", "--vae", bad_vae, *config],
            capsys, "the VAE file", "is not a readable .safetensors file")
    embeds = tmp_path / "embeds.safetensors"
    embeds.write_bytes(b"\x00" * 64)
    refused(["extract", image, *DEMO, "--text-embeds", embeds], capsys, "--text-embeds:",
            "is not a readable .safetensors file")
    save_file({"text_embeds": torch.zeros(1, 4, 7), "pooled": torch.zeros(1, 32)}, str(embeds))
    refused(["extract", image, *DEMO, "--text-embeds", embeds], capsys, "--text-embeds: text_embeds must be [B, L, 32]")


def test_corrupt_files_in_a_diffusers_folder(tmp_path, image, model_files, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_files / "tiny-flux", folder)
    weights = next((folder / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    refused(["extract", image, "--model", folder], capsys, "the transformer file", "not a readable .safetensors")
    weights.unlink()
    refused(["extract", image, "--model", folder], capsys, "holds no .safetensors weights")
    (folder / "transformer" / "config.json").write_text("{ not json")
    refused(["extract", image, "--model", folder], capsys, "config.json is not a readable JSON file")


def test_prompt_without_text_encoders(tmp_path, image, model_files, capsys):
    folder = model_files / "tiny-flux"
    refused(["extract", image, "--model", folder, "--prompt", "a cat"], capsys, "--prompt needs the model's text "
            "encoders", "tiny-flux has none")
    refused(["extract", image, "--model", folder, "--prompt", "a cat", "--no-text-encoders"], capsys,
            "--no-text-encoders turns them off")
    embeds = tmp_path / "embeds.safetensors"
    save_file({"text_embeds": torch.zeros(1, 4, 32), "pooled": torch.zeros(1, 32)}, str(embeds))
    refused(["extract", image, "--model", folder, "--prompt", "a cat", "--text-embeds", embeds], capsys,
            "--text-embeds gives fixed precomputed conditioning")


def test_resolution_beyond_the_models_position_embeddings(image, model_files, capsys):
    # the tiny SD3 has position embeddings for 128 x 128 tokens: 2048 px
    refused(["extract", image, "--model", model_files / "tiny-sd3", "--resolution", "3000"], capsys,
            "--resolution: this SD3 model has position embeddings for at most 128x128 tokens (2048 px)")


# --- argparse and eval -------------------------------------------------------------------------------------------
def test_bad_option_value_is_one_line(image, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(image), "--layer", "x"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: argument --layer: invalid int value: 'x' (see: python -m ditf_core extract --help)"]


def test_eval_mistakes(tmp_path, capsys):
    refused(["eval", "spair", tmp_path, "--demo", "--limit", "0"], capsys, "--limit must be a positive number")
    refused(["eval", "spair", tmp_path, "--demo", "--output", tmp_path], capsys, "--output", "is a folder")
    cache = tmp_path / "cache"
    cache.write_text("")
    refused(["eval", "spair", tmp_path, "--demo", "--cache", cache], capsys, "--cache", "is a file")
    refused(["eval", "spair", tmp_path, "--demo"], capsys, "no SPair-71k pair annotations",
            "check the dataset folder (ROOT)")
