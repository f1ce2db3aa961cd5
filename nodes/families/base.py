"""What a ComfyUI-host family adapter provides: how one comfy.ldm model family looks from inside its blocks.

The mechanism (clone, patches, model management, running the model) lives in ``nodes/comfy_host.py``; an adapter
only describes. It never touches ModelPatcher or model management. Each adapter pairs a ``comfy.ldm`` model class
with the ``ditf_core.families`` adapter of the same family, so block counts, the stream split and the defaults come
from one place for both hosts.

A block patch receives ComfyUI's ``args`` dict (``img``, ``txt``, ``vec``, ...). The adapter says

* which patch key a global block index has (``("double_block", i)`` / ``("single_block", i)``),
* where the image tokens sit in ``args[stream_key]`` (single-stream blocks see ``cat(txt, img)``),
* how the block modulates its image stream's attention branch: ``(shift | scale | gate)`` as one ``[m, 3C]`` tensor,
  computed by the block's own modules (so fp8 weights, LoRA patches and offloading apply as in sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ...ditf_core.families import DiTFamily


@dataclass(frozen=True)
class HostShape:
    """What the host learns from the loaded diffusion model.

    structure: the block lists in the layout ``ditf_core.families`` adapters read (``transformer_blocks`` /
    ``single_transformer_blocks``); context_dim / pooled_dim: widths of the text conditioning (pooled None when the
    family takes none); max_tokens: token-grid side the position embeddings allow (None: no hard limit).
    """

    structure: SimpleNamespace
    hidden_size: int
    context_dim: int
    pooled_dim: int | None
    max_tokens: int | None = None


class ComfyFamily:
    """Base class of a ComfyUI-host family adapter."""

    core: DiTFamily  # the ditf_core adapter of the same family
    supported: str = ""  # how the family is named in errors
    stream_key: str = "img"  # the args entry that carries the image tokens

    def matches(self, base: Any, diffusion: Any) -> bool:
        """Whether ComfyUI's BaseModel ``base`` with diffusion model ``diffusion`` is this family."""
        raise NotImplementedError

    def shape(self, diffusion: Any) -> HostShape:
        """Inspect the diffusion model; raise ``UnsupportedModelError`` for variants DiTF cannot read."""
        raise NotImplementedError

    def patch_key(self, structure: SimpleNamespace, layer: int) -> tuple[str, int]:
        """The ``patches_replace["dit"]`` key of global block ``layer``."""
        split = self.core.split(structure)
        return ("single_block", layer - split) if layer >= split else ("double_block", layer)

    def image_slice(self, structure: SimpleNamespace, layer: int, text_tokens: int, image_tokens: int) -> slice:
        """Where the image tokens of the main image sit in ``args[stream_key]`` along dim 1 (reference images
        some families append after them are left out)."""
        start = text_tokens if layer >= self.core.split(structure) else 0
        return slice(start, start + image_tokens)

    def modulation(self, block: Any, layer: int, args: dict) -> torch.Tensor:
        """The block's attention-branch modulation of the image stream, ``(shift | scale | gate)`` [m, 3C] float32."""
        raise NotImplementedError


def flat_modulation(batch: int, *parts: torch.Tensor) -> torch.Tensor:
    """(shift, scale, gate), each [m, C] or [m, 1, C], as one float32 [m, 3C]."""
    return torch.cat([part.reshape(batch, -1) for part in parts], dim=1).float()
