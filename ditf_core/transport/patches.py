"""What each massive-activation patch does to the image tokens of one block, for any host.

A host (ComfyUI's block patches, the diffusers hooks) finds the image tokens entering a block, ``[B, N, C]``, and hands
them to one of these small, immutable specs; they return the tokens to run the block with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..inspect.analysis import MASSIVE_RATIO
from ..massive import find_massive_channels
from .mask import ma_mask
from .ops import control_channels, disrupt, massive_channels, transport
from .settings import DEFAULT_MASK, DEFAULT_TOP_K, check_mask_mode


@dataclass(frozen=True)
class Disruption:
    """Zero the top-k MA channels of every row (``control``: the k channels with the lowest statistic instead)."""

    top_k: int = DEFAULT_TOP_K
    control: bool = False

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        select = control_channels if self.control else massive_channels
        return disrupt(hidden, select(hidden, self.top_k))


@dataclass(frozen=True)
class MassiveZeroing:
    """Detail Guidance's perturbation D_m: the massive channels zeroed - found per row by the project's rule (median
    |activation| >= ``ratio`` x the map's median, ``ditf_core.find_massive_channels``) or a fixed list."""

    channels: tuple[int, ...] | None = None  # None: detect per row
    ratio: float = MASSIVE_RATIO

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.channels is not None:
            return disrupt(hidden, list(self.channels))
        out = hidden
        for row in range(hidden.shape[0]):
            found = find_massive_channels(hidden[row], self.ratio)
            if found:
                out = out.clone() if out is hidden else out
                out[row : row + 1] = disrupt(hidden[row : row + 1], found)
        return out


@dataclass(frozen=True)
class Transport:
    """Move the target's MA channels towards the source's: ``X_tgt + strength * M * (X_src - X_tgt)``.

    The channel mask m: the source's top-k MA channels (what carries its picture); the spatial mask p by ``mask``:
    "source" / "target" (that row's K-means MA foreground), "union", "mask" (a user mask [B, N]), "none" (all
    tokens).
    """

    top_k: int = DEFAULT_TOP_K
    strength: float = 1.0
    mask: str = DEFAULT_MASK

    def __post_init__(self) -> None:
        check_mask_mode(self.mask)

    def apply(self, target: torch.Tensor, source: torch.Tensor, user_mask: torch.Tensor | None = None) -> torch.Tensor:
        """target, source: [B, N, C]; user_mask: [B, N] in [0, 1], needed for mask "mask"."""
        channels = massive_channels(source, self.top_k)
        return transport(target, source, channels, self.spatial(target, source, channels, user_mask), self.strength)

    def spatial(self, target, source, channels, user_mask) -> torch.Tensor | None:
        """The spatial mask p [B, N] (None: every token)."""
        if self.mask == "none":
            return None
        if self.mask == "mask":
            if user_mask is None:
                raise ValueError("mask is 'mask' but no MASK was given")
            return user_mask
        masks = []
        if self.mask in ("source", "union"):
            masks.append(ma_mask(source, channels))
        if self.mask in ("target", "union"):
            masks.append(ma_mask(target, top_k=self.top_k))
        return torch.stack(masks).amax(dim=0)


def mask_to_grid(mask: torch.Tensor, grid: tuple[int, int], name: str = "mask") -> torch.Tensor:
    """A pixel mask [M, H, W] (or [H, W]) in [0, 1] -> a token mask [M, h*w] float32 on the (h, w) token grid.

    The mask must have the grid's aspect ratio (within one token); values are area-averaged, so soft edges stay soft.
    """
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a MASK [B, H, W], got {shape}")
    mask = mask if mask.ndim == 3 else mask[None]
    height, width = mask.shape[-2:]
    rows, cols = grid
    if abs(height * cols / width - rows) > 1.0:
        raise ValueError(
            f"{name} is {width}x{height} px but the image being generated has a {cols}x{rows} token grid (another "
            f"aspect ratio); give a mask of the generated image's size, e.g. {cols * 16}x{rows * 16} px"
        )
    resized = F.interpolate(mask[:, None].to(torch.float32), size=(rows, cols), mode="area")
    return resized.reshape(mask.shape[0], rows * cols).clamp(0.0, 1.0)
