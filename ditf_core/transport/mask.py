"""The massive-activation spatial mask: K-means (K = 2) over image tokens restricted to the MA channels.

Following the paper: restrict each token to the k MA channels, min-max normalise every channel over the tokens,
cluster the tokens into two groups, and call foreground the cluster whose tokens have the larger mean of the summed
normalised channels. Our choices (the paper gives none): deterministic seeding - the centroids start at the tokens
with the smallest and the largest summed value, so no random numbers are drawn - and at most ``iterations`` Lloyd
steps (stopping early once no token changes cluster). Torch only, batched over rows.
"""

from __future__ import annotations

import torch

from .ops import _check_hidden, massive_channels

KMEANS_ITERATIONS = 25


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
    foreground (all zeros).
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [B, N, k], got {list(features.shape)}")
    summed = features.sum(dim=2)  # [B, N]
    rows = torch.arange(features.shape[0], device=features.device)
    centroids = torch.stack([features[rows, summed.argmin(dim=1)], features[rows, summed.argmax(dim=1)]], dim=1)
    assignment = _assign(features, centroids)
    for _ in range(iterations):
        centroids = _update(features, assignment, centroids)
        updated = _assign(features, centroids)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    one = assignment.to(torch.float32)
    count = one.sum(dim=1)
    mean_in = (summed * one).sum(dim=1) / count.clamp_min(1.0)
    mean_out = (summed * (1.0 - one)).sum(dim=1) / (features.shape[1] - count).clamp_min(1.0)
    foreground_is_one = mean_in > mean_out
    mask = torch.where(foreground_is_one[:, None], one, 1.0 - one)
    degenerate = (count == 0) | (count == features.shape[1])
    return torch.where(degenerate[:, None], torch.zeros_like(mask), mask)


def _assign(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (0 or 1) of the nearest centroid per token: features [B, N, k], centroids [B, 2, k] -> [B, N] int64."""
    distance = torch.cdist(features, centroids)  # [B, N, 2]
    return distance.argmin(dim=2)


def _update(features: torch.Tensor, assignment: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """New centroids as cluster means; an empty cluster keeps its centroid."""
    one_hot = torch.nn.functional.one_hot(assignment, 2).to(features.dtype)  # [B, N, 2]
    counts = one_hot.sum(dim=1)  # [B, 2]
    sums = one_hot.transpose(1, 2) @ features  # [B, 2, k]
    means = sums / counts.clamp_min(1.0)[:, :, None]
    return torch.where(counts[:, :, None] > 0, means, centroids)


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
