"""Family adapters: one small module per DiT family. ``family_for`` picks the adapter for a model.

Adding a family: write a ``DiTFamily`` subclass in its own module, add an instance to ``FAMILIES``, add a tiny
config test.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import DiTFamily, FamilyDefaults, Modulation, adaln_modulation
from .flux import FluxFamily
from .sd3 import SD3Family

FAMILIES: tuple[DiTFamily, ...] = (FluxFamily(), SD3Family())


def family_for(transformer: object) -> DiTFamily:
    """The adapter for ``transformer``, or an error naming the supported families."""
    if not isinstance(transformer, nn.Module):
        raise TypeError(f"expected a diffusers transformer model (torch.nn.Module), got {type(transformer).__name__}")
    for family in FAMILIES:
        if family.matches(transformer):
            return family
    raise UnsupportedModelError(
        f"{type(transformer).__name__} is not a supported Diffusion Transformer; supported: "
        f"{supported_families()} (diffusers FluxTransformer2DModel / SD3Transformer2DModel)."
    )


def supported_families() -> str:
    return ", ".join(f.label for f in FAMILIES)


__all__ = [
    "DiTFamily",
    "FAMILIES",
    "FamilyDefaults",
    "Modulation",
    "adaln_modulation",
    "family_for",
    "supported_families",
]
