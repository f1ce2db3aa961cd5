"""Tiny random DINOv2 (and CLIP vision) models for the fusion tests, in transformers' and ComfyUI's forms.

ComfyUI 0.3.64's stock Load CLIP Vision picks a DINOv2's config by tensor names alone (``encoder.layer.23...`` ->
the 1024-wide large config, ``encoder.layer.39...`` -> giant) and loads the weights into that full-size model: a
tiny DINOv2 cannot go through it (the narrowest it accepts is DINOv2-L, 304 M parameters). So the tests build the
SAME object the stock loader returns - ``comfy.clip_vision.ClipVisionModel`` from a JSON config, weights loaded
with its ``load_sd`` - from a tiny config: in-process here, and on the live server through the test-only loader node
(fixture_pack), from a checkpoint whose metadata carries the config. Import only after ComfyUI is importable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Position embeddings must cover 37 x 37 patches (ComfyUI's Dino2Embeddings fixes 518 px / 14 px).
TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518,
                 layer_norm_eps=1e-6, use_swiglu_ffn=False)
TINY_CLIP_VISION = dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, hidden_act="quick_gelu", image_size=28, patch_size=14, num_channels=3,
                        projection_dim=16, layer_norm_eps=1e-5)
CONFIG_KEY = "ditf_clip_vision_config"  # safetensors metadata: the JSON config for the test-only loader


def tiny_dinov2(seed: int = 0):
    """A transformers Dinov2Model with random weights (float32)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**TINY_DINO)).eval()


def dinov2_checkpoint(model, folder: Path) -> dict[str, torch.Tensor]:
    """The model's weights as a Hugging Face checkpoint file holds them (the layout ComfyUI's loader reads)."""
    model.save_pretrained(str(folder), safe_serialization=True)
    return load_file(str(folder / "model.safetensors"))


def comfy_dinov2_config() -> dict:
    """ComfyUI's DINOv2 JSON config for TINY_DINO (as image_encoders/dino2_large.json, smaller)."""
    return {**TINY_DINO, "model_type": "dinov2", "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225]}


def comfy_clip_vision(config: dict, state: dict[str, torch.Tensor] | None, folder: Path):
    """``comfy.clip_vision.ClipVisionModel`` from a JSON ``config`` and weights, as Load CLIP Vision builds it."""
    import comfy.clip_vision

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config['model_type']}_config.json"
    path.write_text(json.dumps(config))
    model = comfy.clip_vision.ClipVisionModel(str(path))
    if state is not None:
        missing, _ = model.load_sd(dict(state))
        assert not missing, f"weights missing in the ComfyUI model: {missing}"
    return model


def write_checkpoint(path: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    """A checkpoint for the live server's test-only loader: weights plus their ComfyUI JSON config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={CONFIG_KEY: json.dumps(config)})
    return path


def clip_vision_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for TINY_CLIP_VISION in ComfyUI's CLIP vision layout."""
    import comfy.clip_model
    import comfy.ops

    torch.manual_seed(seed)
    model = comfy.clip_model.CLIPVisionModelProjection(TINY_CLIP_VISION, torch.float32, "cpu", comfy.ops.manual_cast)
    return {k: torch.randn(v.shape) * 0.02 for k, v in model.state_dict().items()}
