"""Loading from local files (diffusers folders, single files), feature files, and their clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ditf_core import DiTFeatures, DiTFInputError, DiTFPipeline, PixelMapping, UnsupportedModelError
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae
from ditf_core import load_pipeline
from ditf_core.loading import transformer_preset
from ditf_core.samples import sample_scene

SMALL = dict(resolution=96, ensemble=2, seed=5)


def _pipeline_folder(tmp_path, transformer, vae):
    folder = tmp_path / "model"
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    index = {
        "_class_name": "FluxPipeline" if type(transformer).__name__.startswith("Flux") else "StableDiffusion3Pipeline",
        "transformer": ["diffusers", type(transformer).__name__],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("build", [build_tiny_flux, lambda: build_tiny_sd3(sd35=True)])
def test_diffusers_folder_gives_the_same_features_as_in_memory(tmp_path, build):
    transformer, vae = build(), build_tiny_vae()
    image = sample_scene(size=(120, 90))
    expected = DiTFPipeline(transformer, vae).extract(image, **SMALL)
    loaded = load_pipeline(_pipeline_folder(tmp_path, transformer, vae), device="cpu")
    assert loaded.prompt_encoder.description.startswith("zero conditioning")  # no text encoders in the folder
    assert torch.equal(loaded.extract(image, **SMALL).features, expected.features)


def test_single_file_transformer_with_config_and_vae(tmp_path):
    transformer, vae = build_tiny_flux(), build_tiny_vae()
    folder = _pipeline_folder(tmp_path, transformer, vae)
    single = tmp_path / "flux-tiny.safetensors"
    save_file(transformer.state_dict(), str(single))
    loaded = DiTFPipeline.from_pretrained(single, config=folder / "transformer", vae=folder / "vae", device="cpu")
    image = sample_scene(size=(64, 64))
    expected = DiTFPipeline(transformer, vae).extract(image, **SMALL)
    assert torch.equal(loaded.extract(image, **SMALL).features, expected.features)


def test_transformer_folder_without_vae_is_explained(tmp_path):
    folder = _pipeline_folder(tmp_path, build_tiny_flux(), build_tiny_vae())
    with pytest.raises(DiTFInputError, match="holds only a transformer; also give its VAE"):
        load_pipeline(folder / "transformer")


def test_missing_path_is_explained(tmp_path):
    with pytest.raises(DiTFInputError, match="does not exist; nothing is downloaded"):
        load_pipeline(tmp_path / "FLUX.1-dev")


def test_pickled_checkpoints_are_refused(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not even read")
    with pytest.raises(DiTFInputError, match="only .safetensors weights are loaded"):
        load_pipeline(checkpoint, vae=tmp_path)


def test_unet_folder_is_unsupported(tmp_path):
    folder = tmp_path / "sd15"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnsupportedModelError, match="UNet diffusion model, not a Diffusion Transformer"):
        load_pipeline(folder)


def test_other_transformer_class_is_unsupported(tmp_path):
    folder = tmp_path / "pixart"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    with pytest.raises(UnsupportedModelError, match="PixArtTransformer2DModel; supported: Flux"):
        load_pipeline(folder, vae=folder)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(DiTFInputError, match="not a diffusers model folder"):
        load_pipeline(tmp_path, vae=tmp_path)


@pytest.mark.parametrize(
    "keys, preset",
    [
        ({"double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"}, "flux-dev"),
        ({"double_blocks.0.img_attn.qkv.weight"}, "flux-schnell"),
        ({"joint_blocks.0.x_block.attn.qkv.weight"}, "sd3-medium"),
        ({"joint_blocks.0.x_block.attn.qkv.weight", "joint_blocks.0.x_block.attn2.qkv.weight"}, "sd3.5-medium"),
    ],
)
def test_single_file_presets_are_recognised(tmp_path, keys, preset):
    depth = {"flux": (19, 38), "sd3": 24}
    names = set(keys)
    if preset.startswith("flux"):
        names |= {f"double_blocks.{i}.x" for i in range(depth["flux"][0])}
        names |= {f"single_blocks.{i}.x" for i in range(depth["flux"][1])}
    else:
        names |= {f"joint_blocks.{i}.x" for i in range(depth["sd3"])}
    path = tmp_path / "model.safetensors"
    save_file({f"model.diffusion_model.{name}": torch.zeros(1) for name in names}, str(path))
    assert transformer_preset(path) == preset


def test_preset_configs_exist_for_every_preset():
    from ditf_core.loading import CONFIGS

    for name in ("flux-dev", "flux-schnell", "sd3-medium", "sd3.5-large", "sd3.5-medium", "flux-vae", "sd3-vae"):
        assert json.loads((CONFIGS / name / "config.json").read_text())["_class_name"]


# --- feature files --------------------------------------------------------------------------------------------
def test_feature_file_round_trip(tmp_path):
    features = DiTFeatures(torch.randn(2, 8, 3, 4), PixelMapping((64, 48), (64, 48), (4, 3)),
                           {"layer": 3, "t": 0.26, "model": {"family": "flux"}}, discarded=(1, 5))
    loaded = DiTFeatures.load(features.save(tmp_path / "f.safetensors"))
    assert torch.equal(loaded.features, features.features)
    assert (loaded.mapping, loaded.settings, loaded.discarded) == (features.mapping, features.settings, (1, 5))
    assert loaded.select(1).features.shape == (1, 8, 3, 4)


def test_foreign_safetensors_is_not_a_feature_file(tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a DiTF feature file"):
        DiTFeatures.load(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="no feature file"):
        DiTFeatures.load(tmp_path / "missing.safetensors")


def test_features_must_agree_with_their_mapping():
    with pytest.raises(ValueError, match="feature map is 4x3 cells but the mapping says"):
        DiTFeatures(torch.zeros(1, 8, 3, 4), PixelMapping((64, 48), (64, 48), (5, 3)))
