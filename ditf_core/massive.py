"""Massive activations: the channel rule used for ``discard="auto"``.

A channel is massive when its median |activation| over image tokens is at least ``ratio`` times the median
|activation| of the whole map (the paper's ~100x criterion, after Sun et al. 2024, applied per channel).
"""

from __future__ import annotations

import math

import torch


def channel_magnitudes(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(median |activation| per channel [C], median |activation| of the whole map) for hidden [..., N, C]."""
    if hidden.ndim < 2:
        raise ValueError(f"hidden must be [..., N, C] (tokens by channels), got shape {list(hidden.shape)}")
    magnitude = hidden.detach().abs().to(torch.float32).reshape(-1, hidden.shape[-1])
    return magnitude.median(dim=0).values, magnitude.median()


def find_massive_channels(hidden: torch.Tensor, ratio: float = 100.0) -> list[int]:
    """Massive channels of hidden [..., N, C], largest channel median first.

    All leading dimensions are pooled as tokens. A map whose median magnitude is zero has no massive channel
    unless a channel's own median is positive and the rule holds.
    """
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio must be a positive finite number (default 100), got {ratio!r}")
    per_channel, overall = channel_magnitudes(hidden)
    massive = (per_channel >= ratio * overall) & (per_channel > 0)
    channels = torch.nonzero(massive).flatten()
    order = torch.argsort(per_channel[channels], descending=True, stable=True)
    return [int(c) for c in channels[order]]
