"""Chroma in the ComfyUI host (``comfy.ldm.chroma``; patches_replace["dit"]).

Blocks and token order as Flux: double blocks see image tokens only, single blocks ``cat(txt, img)``. Pruned
modulation: the model slices its approximator's output per block and hands it over as ``args["vec"]`` - a double
block gets ``((img_attn, img_mlp), (txt_attn, txt_mlp))``, a single block one ``(shift, scale, gate)``; the image
stream's attention triple is read from there. Chroma takes no guidance (the model embeds 0, as diffusers does).
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
from comfy.ldm.chroma.model import Chroma

from ...ditf_core.families.chroma import ChromaFamily
from .base import ComfyFamily, HostShape, flat_modulation


class ChromaComfy(ComfyFamily):
    core = ChromaFamily()
    supported = "Chroma"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.Chroma) and type(diffusion) is Chroma

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(
            transformer_blocks=list(diffusion.double_blocks), single_transformer_blocks=list(diffusion.single_blocks)
        )
        return HostShape(structure, int(diffusion.hidden_size), int(diffusion.params.context_in_dim), None)

    def modulation(self, block, layer, args):
        vec = args["vec"]
        mod = vec if hasattr(vec, "shift") else vec[0][0]  # single block: one triple; double: image stream's first
        return flat_modulation(mod.shift.shape[0], mod.shift, mod.scale, mod.gate)

    def cond_kwargs(self, kwargs, x):
        return {**kwargs, "guidance": 0.0}
