"""DINOv2 as ComfyUI loads it - a CLIP_VISION from the stock Load CLIP Vision node, whose ``model`` is a
``comfy.image_encoders.dino2.Dinov2Model`` (ComfyUI 0.3.64 maps config ``model_type`` "dinov2" to it for the
DINOv2 large / giant checkpoints) - run for fusion.

ComfyUI's own forward (CLIP Vision Encode) takes a 518 px square crop only: its position embeddings are added
without interpolation. Fusion wants the whole image at its aspect ratio and SD-DINO's 840 px, so the forward is
composed here from the model's own modules (patch embedding, class token, encoder): the 37 x 37 position embeddings
are interpolated as DINOv2 does (``ditf_core.fusion.dino.interpolate_position_embeddings``) and the last block's
tokens are read before the final LayerNorm. Weights are loaded onto their device by ``comfy_host`` (the only module
that touches model management) and stay in ComfyUI's dtype; the input runs in float32 as CLIP Vision Encode does.
"""

from __future__ import annotations

import torch
from comfy.image_encoders.dino2 import Dinov2Model as ComfyDinov2

from ..ditf_core.errors import DiTFInputError
from ..ditf_core.fusion.dino import (
    DEFAULT_DINO_RESOLUTION,
    DinoFeatures,
    describe_dinov2,
    dino_mapping,
    interpolate_position_embeddings,
    preprocess,
    tokens_to_map,
)
from ..ditf_core.recipe import ProgressFn
from . import comfy_host

NEEDED = (
    "Fuse DINOv2 needs a DINOv2 vision model: put the DINOv2 large or giant model.safetensors (the Hugging Face "
    "facebook/dinov2-large or -giant layout) in models/clip_vision and load it with Load CLIP Vision"
)


def check_dinov2(clip_vision) -> ComfyDinov2:
    """The DINOv2 inside a CLIP_VISION, or an error naming the input and what it must be."""
    model = getattr(clip_vision, "model", None)
    if model is None or not hasattr(clip_vision, "patcher"):
        raise TypeError(f"clip_vision must be a CLIP_VISION from Load CLIP Vision, got {type(clip_vision).__name__}")
    if not isinstance(model, ComfyDinov2):
        kind = "a SigLIP" if getattr(clip_vision, "return_all_hidden_states", False) else "a CLIP"
        raise DiTFInputError(f"clip_vision holds {kind} vision model ({type(model).__name__}), not DINOv2; {NEEDED}")
    return model


def encode_dinov2(
    clip_vision,
    pixels: torch.Tensor,
    *,
    resolution: int = DEFAULT_DINO_RESOLUTION,
    micro_batch: int = 4,
    progress: ProgressFn | None = None,
) -> DinoFeatures:
    """Images [B, 3, H, W] in [0, 1] -> their DINOv2 patch features, ``micro_batch`` images per forward pass;
    ``progress(done, total)`` after each pass (it may raise to cancel)."""
    model = check_dinov2(clip_vision)
    mapping = dino_mapping(pixels.shape[-1], pixels.shape[-2], resolution)
    grid = (mapping.grid_size[1], mapping.grid_size[0])
    device = comfy_host.load_clip_vision(clip_vision)
    chunks = pixels.split(max(1, micro_batch))
    maps = []
    with torch.no_grad():
        for done, chunk in enumerate(chunks, start=1):
            maps.append(tokens_to_map(_last_block(model, preprocess(chunk, mapping).to(device), grid), grid))
            if progress is not None:
                progress(done, len(chunks))
    embeddings = model.embeddings
    depth = len(model.encoder.layer)
    info = describe_dinov2(embeddings.patch_embeddings.projection.weight, embeddings.cls_token, depth)
    return DinoFeatures(torch.cat(maps), mapping, info)


def _last_block(model: ComfyDinov2, inputs: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The last block's output tokens [B, 1 + h w, C] for a normalised input [B, 3, 14 h, 14 w] (float32)."""
    embeddings = model.embeddings
    tokens = embeddings.patch_embeddings(inputs)  # [B, h w, C]; ComfyUI's ops cast the weights to the input
    cls = embeddings.cls_token.to(device=tokens.device, dtype=tokens.dtype).expand(tokens.shape[0], -1, -1)
    position = embeddings.position_embeddings.to(device=tokens.device, dtype=tokens.dtype)
    tokens = torch.cat([cls, tokens], dim=1) + interpolate_position_embeddings(position, grid)
    tokens, _ = model.encoder(tokens)
    return tokens
