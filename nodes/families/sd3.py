"""SD3 / SD3.5 (ComfyUI's MMDiT) in the ComfyUI host.

Every block is a joint block: ``img`` holds image tokens only. The image (x) stream modulates with
``x_block.adaLN_modulation(c)``, whose chunks start with the attention branch's (shift, scale, gate): 6 chunks in
SD3, 9 in SD3.5's dual-attention blocks.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

from ...ditf_core.errors import UnsupportedModelError
from ...ditf_core.families.sd3 import SD3Family
from .base import ComfyFamily, HostShape, flat_modulation


class SD3Comfy(ComfyFamily):
    core = SD3Family()
    supported = "SD3 / SD3.5 (MMDiT)"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.SD3) and isinstance(diffusion, MMDiT)

    def shape(self, diffusion) -> HostShape:
        hidden = int(diffusion.hidden_size)
        for index, block in enumerate(diffusion.joint_blocks):
            chunks = block.x_block.adaLN_modulation[-1].out_features // hidden
            if chunks not in (6, 9):  # (shift, scale, gate) x 2, or x 3 with SD3.5's second attention
                raise UnsupportedModelError(
                    f"joint block {index} of this MMDiT has an unsupported modulation ({chunks} chunks)"
                )
        embedder = diffusion.context_embedder
        if not hasattr(embedder, "in_features"):
            raise UnsupportedModelError("this MMDiT has no text context embedder; DiTF supports SD3 / SD3.5")
        pooled = None if diffusion.y_embedder is None else int(diffusion.y_embedder.mlp[0].in_features)
        structure = SimpleNamespace(transformer_blocks=list(diffusion.joint_blocks))
        return HostShape(structure, hidden, int(embedder.in_features), pooled, diffusion.pos_embed_max_size)

    def modulation(self, block, layer, args):
        vec = args["vec"]
        out = block.x_block.adaLN_modulation(vec)
        shift, scale, gate = out.chunk(out.shape[1] // vec.shape[1], dim=1)[:3]  # image (x) stream, attention
        return flat_modulation(vec.shape[0], shift, scale, gate)
