"""Lumina-Image 2.0 (NextDiT) in the ComfyUI host (``comfy.ldm.lumina``). ComfyUI 0.3.64's NextDiT forward has no
patches_replace["dit"]: blocks are reached with ModelPatcher object patches on the clone (``mechanism``), at
``diffusion_model.layers.<i>`` (the main joint blocks; the refiners are not counted, as in the diffusers host).

Blocks are called positionally ``(x, x_mask, freqs_cis, adaln_input)``; ``x`` holds the caption tokens first, then
the image tokens. Scale-only modulation: ``adaLN_modulation(adaln_input)`` gives (scale, gate, scale_mlp,
gate_mlp); the block feeds its attention ``RMSNorm(x) * (1 + scale)`` and gates with ``tanh(gate)`` - "shift" is
zero. ComfyUI needs the caption's token count, given as an all-ones attention mask.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
import torch
from comfy.ldm.lumina.model import NextDiT

from ...ditf_core.families.base import call_argument
from ...ditf_core.families.lumina2 import Lumina2Family
from .base import ComfyFamily, HostShape, flat_modulation


class Lumina2Comfy(ComfyFamily):
    core = Lumina2Family()
    supported = "Lumina-Image 2.0 (NextDiT)"
    mechanism = "object_patch"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.Lumina2) and isinstance(diffusion, NextDiT)

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(layers=list(diffusion.layers))
        return HostShape(structure, int(diffusion.dim), int(diffusion.cap_embedder[1].in_features), None)

    def block_path(self, structure, layer) -> str:
        return f"diffusion_model.layers.{layer}"

    def image_slice(self, structure, layer, text_tokens, image_tokens):
        return slice(text_tokens, text_tokens + image_tokens)  # caption first

    def call_args(self, args, kwargs):
        return {"img": call_argument(args, kwargs, "x", 0), "vec": call_argument(args, kwargs, "adaln_input", 3)}

    def modulation(self, block, layer, args):
        vec = args["vec"]
        scale, gate = block.adaLN_modulation(vec).chunk(4, dim=1)[:2]
        return flat_modulation(vec.shape[0], torch.zeros_like(scale), scale, torch.tanh(gate))

    def cond_kwargs(self, kwargs, x):
        # One mask row: ComfyUI counts the caption tokens as the mask's sum (all valid, so no mask is applied).
        mask = torch.ones(1, kwargs["cross_attn"].shape[1], dtype=torch.long, device=x.device)  # an integer count
        return {**kwargs, "attention_mask": mask}
