"""The transformers host of DINOv2 on a tiny random Dinov2 (a config, no download): local safetensors folders only,
the last block's patch tokens on an aspect-keeping grid, position embeddings interpolated as transformers does."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ditf_core import DiTFInputError
from ditf_core.fusion import DINO_PATCH, load_dinov2
from ditf_core.fusion.dino import interpolate_position_embeddings, preprocess

TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518)


def tiny_dinov2(seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**TINY_DINO)).eval()


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2-tiny")
    tiny_dinov2().save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def encoder(dino_folder):
    return load_dinov2(dino_folder, device="cpu", dtype=torch.float32)


def test_encode_gives_the_last_blocks_patch_tokens_on_an_aspect_keeping_grid(encoder):
    pixels = torch.rand(2, 3, 60, 90, generator=torch.Generator().manual_seed(1))
    features = encoder.encode(pixels, resolution=126)
    mapping = features.mapping
    assert mapping.image_size == (90, 60) and mapping.model_size == (126, 84) and mapping.grid_size == (9, 6)
    assert features.features.shape == (2, 32, 6, 9) and features.features.dtype == torch.float32
    with torch.no_grad():
        out = encoder.model(pixel_values=preprocess(pixels, mapping), output_hidden_states=True)
    tokens = out.hidden_states[-1]  # the last block's output, before the final LayerNorm (SD-DINO's "token" facet)
    expected = tokens[:, 1:].transpose(1, 2).reshape(2, 32, 6, 9)
    assert torch.allclose(features.features, expected, atol=1e-5)
    assert not torch.allclose(features.features, out.last_hidden_state[:, 1:].transpose(1, 2).reshape(2, 32, 6, 9))


def test_micro_batches_do_not_change_the_result(encoder):
    pixels = torch.rand(3, 3, 28, 42, generator=torch.Generator().manual_seed(2))
    whole = encoder.encode(pixels, resolution=56, micro_batch=3).features
    assert torch.allclose(encoder.encode(pixels, resolution=56, micro_batch=1).features, whole, atol=1e-5)


def test_description_is_host_neutral_and_tells_checkpoints_apart(encoder):
    info = encoder.describe()
    assert info["name"] == "DINOv2 32-wide" and info["hidden_size"] == 32 and info["depth"] == 2
    from ditf_core.fusion import TransformersDino

    other = TransformersDino(tiny_dinov2(seed=1), device="cpu")
    assert other.describe()["weights_sha256"] != info["weights_sha256"]


def test_position_embeddings_are_interpolated_like_transformers(encoder):
    embeddings = encoder.model.embeddings
    tokens = torch.zeros(1, 1 + 5 * 7, 32)
    ours = interpolate_position_embeddings(embeddings.position_embeddings, (5, 7))
    theirs = embeddings.interpolate_pos_encoding(tokens, 5 * DINO_PATCH, 7 * DINO_PATCH)
    assert ours.shape == (1, 36, 32) and torch.allclose(ours, theirs, atol=1e-6)


def test_pil_images_and_the_sd_dino_default_size(encoder):
    image = Image.new("RGB", (200, 100), (40, 120, 200))
    features = encoder.encode(image)
    assert features.mapping.model_size == (840, 420) and features.mapping.grid_size == (60, 30)


def test_only_local_safetensors_dinov2_folders_load(tmp_path, dino_folder):
    with pytest.raises(DiTFInputError, match="not a transformers model folder"):
        load_dinov2(tmp_path / "missing")
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(DiTFInputError, match="holds a clip_vision_model; fusion needs a DINOv2"):
        load_dinov2(clip)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((dino_folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DiTFInputError, match="no .safetensors weights"):
        load_dinov2(pickled)
    with pytest.raises(DiTFInputError, match="DINOv2 resolution must be"):
        load_dinov2(dino_folder).encode(torch.rand(1, 3, 20, 20), resolution=10)
