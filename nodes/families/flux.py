"""Flux.1 (dev, schnell, and other ``comfy.ldm.flux`` models) in the ComfyUI host.

Double blocks see ``img`` (image tokens only); single blocks see ``img = cat(txt, img)``. Both modulate with their
own modules: double blocks ``img_mod(vec)`` (image stream), single blocks ``modulation(vec)``.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
from comfy.ldm.flux.model import Flux

from ...ditf_core.errors import UnsupportedModelError
from ...ditf_core.families.flux import FluxFamily
from .base import ComfyFamily, HostShape, flat_modulation


class FluxComfy(ComfyFamily):
    core = FluxFamily()
    supported = "Flux.1 dev / schnell (and other comfy.ldm.flux models)"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.Flux) and isinstance(diffusion, Flux)

    def shape(self, diffusion) -> HostShape:
        if diffusion.patch_size != self.core.patch:
            raise UnsupportedModelError(
                f"this Flux uses {diffusion.patch_size}x{diffusion.patch_size} patches; DiTF needs 2x2"
            )
        params = diffusion.params
        structure = SimpleNamespace(
            transformer_blocks=list(diffusion.double_blocks), single_transformer_blocks=list(diffusion.single_blocks)
        )
        return HostShape(structure, int(params.hidden_size), int(params.context_in_dim), int(params.vec_in_dim))

    def modulation(self, block, layer, args):
        vec = args["vec"]
        single = hasattr(block, "modulation")
        mod, _ = block.modulation(vec) if single else block.img_mod(vec)
        return flat_modulation(vec.shape[0], mod.shift, mod.scale, mod.gate)
