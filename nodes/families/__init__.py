"""ComfyUI-host family adapters, one small module per family (mirrors ``ditf_core/families``).

Adding a family: a ``ComfyFamily`` subclass in its own module, an instance in ``COMFY_FAMILIES``, and a tiny test
in the integration tier. ``nodes/comfy_host.py`` stays about the mechanism.
"""

from __future__ import annotations

from typing import Any

from ...ditf_core.errors import UnsupportedModelError
from .base import ComfyFamily, HostShape
from .flux import FluxComfy
from .sd3 import SD3Comfy

COMFY_FAMILIES: tuple[ComfyFamily, ...] = (FluxComfy(), SD3Comfy())


def comfy_family_for(base: Any, diffusion: Any) -> ComfyFamily:
    """The adapter for ComfyUI's BaseModel ``base`` / diffusion model ``diffusion``, or an error naming the
    supported families."""
    for family in COMFY_FAMILIES:
        if family.matches(base, diffusion):
            return family
    raise UnsupportedModelError(
        f"this MODEL is a {type(base).__name__} ({type(diffusion).__name__}), not a supported Diffusion "
        f"Transformer; DiTF supports {supported_comfy_families()}. UNet models (SD1.5, SDXL) have no transformer "
        "blocks to read."
    )


def supported_comfy_families() -> str:
    return " and ".join(family.supported for family in COMFY_FAMILIES)


__all__ = ["COMFY_FAMILIES", "ComfyFamily", "HostShape", "comfy_family_for", "supported_comfy_families"]
