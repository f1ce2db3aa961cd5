"""Loading the families beyond Flux.1 / SD3 from local files: diffusers folders (transformer + the family's VAE
class), single-file release detection through diffusers' own model-type inference, and clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file

from ditf_core import DiTFPipeline, UnsupportedModelError, load_pipeline
from ditf_core.demo_model import build_tiny_family, build_tiny_vae
from ditf_core.errors import DiTFInputError
from ditf_core.loading import load_vae
from ditf_core.releases import CONFIGS, RELEASE_PRESETS, VAE_PRESETS, transformer_preset
from ditf_core.samples import sample_scene

VAES = {"flux2": "flux2", "qwen_image": "qwen", "wan": "wan", "pixart": "kl4", "auraflow": "kl4"}
SMALL = dict(resolution=64, ensemble=2, seed=4)


def write_pipeline_folder(folder, transformer, vae):
    transformer.save_pretrained(str(folder / "transformer"), safe_serialization=True)
    vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    index = {"_class_name": "SomePipeline", "transformer": ["diffusers", type(transformer).__name__],
             "vae": ["diffusers", type(vae).__name__]}
    (folder / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("name", ["flux2", "chroma", "qwen_image", "lumina2", "z_image", "hidream", "pixart",
                                  "auraflow", "wan"])
def test_diffusers_folder_gives_the_same_features_as_in_memory(tmp_path, name):
    transformer, vae = build_tiny_family(name), build_tiny_vae(kind=VAES.get(name, "kl16"))
    write_pipeline_folder(tmp_path, transformer, vae)
    if name == "wan" and importlib.util.find_spec("accelerate") is None:
        with pytest.raises(DiTFInputError, match="only with the `accelerate` package"):
            load_pipeline(tmp_path, device="cpu", dtype=torch.float32)
        return
    loaded = load_pipeline(tmp_path, device="cpu", dtype=torch.float32)
    assert type(loaded.vae) is type(vae) and loaded.family.name == name
    image = sample_scene(size=(70, 50))
    expected = DiTFPipeline(transformer, vae).extract(image, **SMALL)
    assert torch.equal(loaded.extract(image, **SMALL).features, expected.features)


def _fake_file(tmp_path, names, shapes=None):
    shapes = shapes or {}
    path = tmp_path / "model.safetensors"
    save_file({name: torch.zeros(shapes.get(name, (1,))) for name in names}, str(path))
    return path


def _blocks(prefix, count):
    return {f"{prefix}{i}.x" for i in range(count)}


@pytest.mark.parametrize("names, shapes, preset", [
    ({"single_stream_modulation.lin.weight"} | _blocks("double_blocks.", 8) | _blocks("single_blocks.", 48), {},
     "flux2-dev"),
    ({"model.diffusion_model.distilled_guidance_layer.in_proj.bias"}, {}, "chroma"),
    ({"cap_embedder.0.weight"}, {}, "lumina2"),
    ({"layers.0.adaLN_modulation.0.weight", "cap_embedder.0.weight"}, {}, "z-image-turbo"),
    ({"double_layers.0.attn.w2q.weight", "double_layers.0.attn.w1q.weight", "cond_seq_linear.weight",
      "t_embedder.mlp.0.weight"}, {}, "auraflow-v0.3"),
    ({"head.modulation", "patch_embedding.weight"}, {"patch_embedding.weight": (1536, 16, 1, 1, 1)}, "wan2.1-t2v-1.3b"),
    ({"head.modulation", "patch_embedding.weight"}, {"patch_embedding.weight": (5120, 16, 1, 1, 1)}, "wan2.1-t2v-14b"),
    ({"transformer_blocks.0.img_mod.1.weight", "txt_norm.weight"}, {}, "qwen-image"),
])
def test_single_file_releases_are_recognised_by_diffusers_detection(tmp_path, names, shapes, preset):
    assert transformer_preset(_fake_file(tmp_path, names, shapes)) == preset


@pytest.mark.parametrize("names, shapes, error, message", [
    ({"double_stream_blocks.0.block.adaLN_modulation.1.bias"}, {}, DiTFInputError, "hidream.*pass the diffusers config"),
    ({"single_stream_modulation.lin.weight"} | _blocks("double_blocks.", 5), {}, DiTFInputError, "klein"),
    ({"head.modulation", "patch_embedding.weight"}, {"patch_embedding.weight": (3072, 48, 1, 1, 1)},
     UnsupportedModelError, "wan-i2v-14B"),
    ({"blocks.0.attn.qkv.weight", "t_block.1.weight"}, {}, UnsupportedModelError, "PixArt loads from a diffusers"),
])
def test_unknown_single_files_are_explained(tmp_path, names, shapes, error, message):
    with pytest.raises(error, match=message):
        transformer_preset(_fake_file(tmp_path, names, shapes))


def test_every_preset_config_exists_and_names_a_supported_class():
    from ditf_core.loading import TRANSFORMER_CLASSES, VAE_CLASSES

    for preset in [p for p in RELEASE_PRESETS.values() if p] + ["qwen-image"]:
        assert json.loads((CONFIGS / preset / "config.json").read_text())["_class_name"] in TRANSFORMER_CLASSES
    for preset in filter(None, VAE_PRESETS.values()):
        assert json.loads((CONFIGS / preset / "config.json").read_text())["_class_name"] in VAE_CLASSES


@pytest.mark.parametrize("name", ["flux2", "qwen_image", "pixart"])
def test_single_file_vaes_without_a_loader_are_explained(tmp_path, name):
    path = tmp_path / "vae.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(DiTFInputError, match="give the diffusers VAE folder"):
        load_vae(path, transformer=build_tiny_family(name))


def test_a_vae_folder_of_another_kind_is_explained(tmp_path):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderDC"}))
    with pytest.raises(DiTFInputError, match="not a diffusers VAE folder"):
        load_vae(folder)
