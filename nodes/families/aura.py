"""AuraFlow in the ComfyUI host (``comfy.ldm.aura``; patches_replace["dit"]).

Double (MMDiT) blocks see image tokens only and modulate the image stream with ``modX(vec)``; single (DiT) blocks
see ``cat(registers + text, image)`` and modulate with ``modCX(vec)``; the first three chunks are the attention
branch's (shift, scale, gate). The image tokens of a single block start after the text AND the model's register
tokens.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
from comfy.ldm.aura.mmdit import MMDiT

from ...ditf_core.families.auraflow import AuraFlowFamily
from .base import ComfyFamily, HostShape, flat_modulation


class AuraFlowComfy(ComfyFamily):
    core = AuraFlowFamily()
    supported = "AuraFlow"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.AuraFlow) and isinstance(diffusion, MMDiT)

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(
            joint_transformer_blocks=list(diffusion.double_layers), single_transformer_blocks=list(diffusion.single_layers),
            register_tokens=int(diffusion.register_tokens.shape[1]),
            # what AuraFlowFamily reads for its resolution bound: the learned position table holds side^2 entries
            config=SimpleNamespace(pos_embed_max_size=int(diffusion.positional_encoding.shape[1])),
        )
        hidden = int(diffusion.positional_encoding.shape[-1])
        return HostShape(structure, hidden, int(diffusion.cond_seq_linear.in_features), None)

    def image_slice(self, structure, layer, text_tokens, image_tokens):
        if layer < self.core.split(structure):
            return slice(0, image_tokens)
        start = text_tokens + structure.register_tokens
        return slice(start, start + image_tokens)

    def modulation(self, block, layer, args):
        vec = args["vec"]
        layer_mod = block.modX if hasattr(block, "modX") else block.modCX
        shift, scale, gate = layer_mod(vec).chunk(6, dim=1)[:3]
        return flat_modulation(vec.shape[0], shift, scale, gate)
