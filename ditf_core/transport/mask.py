"""The massive-activation spatial mask: K-means (K = 2) over image tokens restricted to the MA channels.

Following the paper: restrict each token to the k MA channels, min-max normalise every channel over the tokens,
cluster the tokens into two groups, and call foreground the cluster whose tokens have the larger mean of the summed
normalised channels. Our choices (the paper gives none): deterministic seeding - the centroids start at the tokens
with the smallest and the largest summed value, so no random numbers are drawn - and a fixed number of Lloyd steps
(two clusters from extreme seeds settle in a few; a fixed count never waits for the GPU to report convergence, which
matters because transport runs this once per block and step). Torch only, batched over rows.
"""

from __future__ import annotations

import torch

from .ops import _check_hidden, massive_channels

KMEANS_ITERATIONS = 10


def ma_mask(hidden: torch.Tensor, channels: torch.Tensor | None = None, *, top_k: int = 12,
            iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Foreground mask of each row: hidden [B, N, C] -> [B, N] float32 in {0, 1} (1 = foreground).

    channels: [B, k] MA channels per row; None selects the top-k by ``|mean over tokens|`` (:func:`massive_channels`).
    """
    _check_hidden(hidden)
    if channels is None:
        channels = massive_channels(hidden, top_k)
    channels = torch.as_tensor(channels, device=hidden.device).long()
    if channels.ndim == 1:
        channels = channels.expand(hidden.shape[0], -1)
    features = hidden.gather(2, channels[:, None, :].expand(-1, hidden.shape[1], -1)).to(torch.float32)
    return kmeans_foreground(min_max(features), iterations=iterations)


def min_max(features: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max normalisation over tokens: [B, N, k] -> [B, N, k] in [0, 1] (constant channels -> 0)."""
    low = features.amin(dim=1, keepdim=True)
    span = features.amax(dim=1, keepdim=True) - low
    return torch.where(span > 0, (features - low) / span.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def kmeans_foreground(features: torch.Tensor, *, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Two-cluster K-means of tokens [B, N, k] (normalised); returns [B, N] float32, 1 on the foreground cluster.

    Foreground: the cluster with the larger mean of the summed features. A row whose tokens are all equal has no
    foreground (all zeros). Written for two clusters (squared distances, masked means) and without host
    synchronisation: it runs once per block and step during transport.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [B, N, k], got {list(features.shape)}")
    tokens = features.shape[1]
    summed = features.sum(dim=2)  # [B, N]
    rows = torch.arange(features.shape[0], device=features.device)
    low, high = features[rows, summed.argmin(dim=1)], features[rows, summed.argmax(dim=1)]  # centroids [B, k]
    for step in range(iterations + 1):
        # nearest centroid; a tie goes to the low one
        assignment = (features - high[:, None]).square().sum(dim=2) < (features - low[:, None]).square().sum(dim=2)
        if step == iterations:
            break
        weight = assignment.to(features.dtype)[:, :, None]
        in_high = weight.sum(dim=1)  # [B, 1]
        in_low = tokens - in_high
        high = torch.where(in_high > 0, (features * weight).sum(dim=1) / in_high.clamp_min(1.0), high)
        low = torch.where(in_low > 0, (features * (1.0 - weight)).sum(dim=1) / in_low.clamp_min(1.0), low)
    one = assignment.to(torch.float32)
    count = one.sum(dim=1)
    mean_in = (summed * one).sum(dim=1) / count.clamp_min(1.0)
    mean_out = (summed * (1.0 - one)).sum(dim=1) / (tokens - count).clamp_min(1.0)
    mask = torch.where((mean_in > mean_out)[:, None], one, 1.0 - one)
    degenerate = (count == 0) | (count == tokens)
    return torch.where(degenerate[:, None], torch.zeros_like(mask), mask)


def mask_image(hidden: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], *, top_k: int = 12) -> torch.Tensor:
    """The MA foreground of captured block inputs as a picture mask.

    hidden: [B, N, C] image tokens on a (rows, cols) ``grid``; size: (height, width) of the picture. Returns [B, H, W]
    float32 in {0, 1}; token cells are upsampled without blending (nearest), as DiTF previews show features.
    """
    rows, cols = grid
    if hidden.ndim != 3 or hidden.shape[1] != rows * cols:
        raise ValueError(f"hidden must be [B, {rows * cols}, C] for a {rows}x{cols} grid, got {list(hidden.shape)}")
    tokens = ma_mask(hidden, top_k=top_k).reshape(hidden.shape[0], 1, rows, cols)
    return torch.nn.functional.interpolate(tokens, size=size, mode="nearest")[:, 0]


def mask_overlay(pixels: torch.Tensor, mask: torch.Tensor, background: float = 0.3) -> torch.Tensor:
    """A preview: pixels [B, 3, H, W] in [0, 1] with the background (mask [B, H, W] = 0) dimmed to ``background``."""
    weight = background + (1.0 - background) * mask[:, None].to(pixels.dtype)
    return (pixels * weight).clamp(0.0, 1.0)
