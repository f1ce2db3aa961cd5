"""Qwen-Image in the ComfyUI host (``comfy.ldm.qwen_image``; patches_replace["dit"]).

Every block is double-stream: ``args["img"]`` holds the image tokens (reference-image tokens of edit workflows
follow them and are left out). Per-block modulation ``img_mod(vec)``: its first half's three chunks are the image
attention's (shift, scale, gate). The model takes 5-D latents (Wan VAE): a single image is one frame.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel

from ...ditf_core.families.qwen_image import QwenImageFamily
from .base import ComfyFamily, HostShape, flat_modulation


class QwenImageComfy(ComfyFamily):
    core = QwenImageFamily()
    supported = "Qwen-Image"
    video = True

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.QwenImage) and isinstance(diffusion, QwenImageTransformer2DModel)

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(transformer_blocks=list(diffusion.transformer_blocks))
        return HostShape(structure, int(diffusion.inner_dim), int(diffusion.txt_in.in_features), None)

    def modulation(self, block, layer, args):
        vec = args["vec"]
        shift, scale, gate = block.img_mod(vec).chunk(2, dim=-1)[0].chunk(3, dim=-1)
        return flat_modulation(vec.shape[0], shift, scale, gate)
