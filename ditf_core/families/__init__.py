"""Family adapters: one small module per DiT family. ``family_for`` picks the adapter for a model.

Adding a family: write a ``DiTFamily`` subclass in its own module, add an instance to ``FAMILIES``, add its tiny
config to ``ditf_core.demo_model.TINY_FAMILIES`` and a by-hand reference to ``tests/reference_families.py``.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .auraflow import AuraFlowFamily
from .base import DiTFamily, FamilyDefaults, Modulation, adaln_modulation
from .chroma import ChromaFamily
from .flux import FluxFamily
from .flux2 import Flux2Family
from .hidream import HiDreamFamily
from .lumina2 import Lumina2Family, ZImageFamily
from .pixart import PixArtFamily
from .qwen_image import QwenImageFamily
from .sd3 import SD3Family
from .wan import WanFamily

FAMILIES: tuple[DiTFamily, ...] = (
    FluxFamily(),
    SD3Family(),
    Flux2Family(),
    ChromaFamily(),
    QwenImageFamily(),
    Lumina2Family(),
    ZImageFamily(),
    HiDreamFamily(),
    PixArtFamily(),
    AuraFlowFamily(),
    WanFamily(),
)


def family_for(transformer: object) -> DiTFamily:
    """The adapter for ``transformer``, or an error naming the supported families."""
    if not isinstance(transformer, nn.Module):
        raise TypeError(f"expected a diffusers transformer model (torch.nn.Module), got {type(transformer).__name__}")
    for family in FAMILIES:
        if family.matches(transformer):
            return family
    raise UnsupportedModelError(
        f"{type(transformer).__name__} is not a supported Diffusion Transformer; supported: {supported_families()}."
    )


def family_named(name: str) -> DiTFamily:
    """The adapter whose ``name`` is ``name`` (e.g. "flux", "wan")."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise UnsupportedModelError(f"no DiT family named {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def supported_families() -> str:
    return ", ".join(f.label for f in FAMILIES)


__all__ = [
    "DiTFamily",
    "FAMILIES",
    "FamilyDefaults",
    "Modulation",
    "adaln_modulation",
    "family_for",
    "family_named",
    "supported_families",
]
