"""PixArt-alpha / PixArt-Sigma in the ComfyUI host (``comfy.ldm.pixart``). ComfyUI 0.3.64's PixArt forward has no
patches_replace["dit"]: blocks are reached with ModelPatcher object patches on the clone (``mechanism``), at
``diffusion_model.blocks.<i>``.

Blocks are called positionally ``(x, y, t0, ...)``: image tokens only, and the shared adaLN-single vector ``t0``
[B, 6C] to which each block adds its ``scale_shift_table``; rows 0, 1, 2 are the attention (shift, scale, gate).
PixArt is an epsilon-prediction model: DiTF time t is the DDPM timestep round(1000 t), whose sigma comes from the
model's own sampling schedule; ComfyUI noises as x0 + sigma * noise and scales the input itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
import torch
from comfy.ldm.pixart.pixartms import PixArtMS

from ...ditf_core.families.base import call_argument
from ...ditf_core.families.pixart import PixArtFamily, ddpm_timestep
from .base import ComfyFamily, HostShape, flat_modulation


class PixArtComfy(ComfyFamily):
    core = PixArtFamily()
    supported = "PixArt-alpha / Sigma"
    mechanism = "object_patch"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.PixArt) and isinstance(diffusion, PixArtMS)

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(transformer_blocks=list(diffusion.blocks))
        return HostShape(structure, int(diffusion.hidden_size), int(diffusion.y_embedder.y_proj.fc1.in_features), None)

    def block_path(self, structure, layer) -> str:
        return f"diffusion_model.blocks.{layer}"

    def call_args(self, args, kwargs):
        return {"img": call_argument(args, kwargs, "x", 0), "vec": call_argument(args, kwargs, "t", 2)}

    def modulation(self, block, layer, args):
        vec = args["vec"]
        table = block.scale_shift_table.to(device=vec.device, dtype=torch.float32)
        rows = table[None] + vec.float().reshape(vec.shape[0], 6, -1)
        return flat_modulation(vec.shape[0], rows[:, 0], rows[:, 1], rows[:, 2])

    def sigma(self, model_sampling, t):
        return float(model_sampling.sigma(torch.tensor(float(ddpm_timestep(t)))))

    def cond_kwargs(self, kwargs, x):
        # PixArt-alpha's micro-conditions: the image size in pixels (ignored by models without them).
        return {**kwargs, "width": x.shape[-1] * self.core.vae_factor, "height": x.shape[-2] * self.core.vae_factor}
