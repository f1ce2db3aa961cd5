"""Wan 2.1 / 2.2 text-to-video (16-channel) in the ComfyUI host (``comfy.ldm.wan``; patches_replace["dit"]),
on single images: one frame.

Blocks see image tokens only; ``args["vec"]`` is the shared time projection ``e0`` ([B, 1, 6, C], or [B, 6, C]),
to which each block adds its learned ``modulation`` table; rows 0, 1, 2 are the self-attention (shift, scale,
gate), as in the block's own forward.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
import torch
from comfy.ldm.wan.model import WanModel

from ...ditf_core.families.wan import WanFamily
from .base import ComfyFamily, HostShape, flat_modulation


class WanComfy(ComfyFamily):
    core = WanFamily()
    supported = "Wan 2.1 / 2.2 text-to-video (16-channel)"
    video = True

    def matches(self, base, diffusion) -> bool:
        return (isinstance(base, comfy.model_base.WAN21) and type(diffusion) is WanModel
                and diffusion.patch_embedding.in_channels == 16)

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(blocks=list(diffusion.blocks))
        return HostShape(structure, int(diffusion.dim), int(diffusion.text_embedding[0].in_features), None)

    def modulation(self, block, layer, args):
        vec = args["vec"]
        table = block.modulation.to(device=vec.device, dtype=torch.float32)
        rows = table + vec.float() if vec.ndim < 4 else table.unsqueeze(0) + vec.float()
        rows = rows.reshape(vec.shape[0], -1, 6, table.shape[-1])[:, 0]  # [B, 6, C] (one frame: one time step)
        return flat_modulation(vec.shape[0], rows[:, 0], rows[:, 1], rows[:, 2])
