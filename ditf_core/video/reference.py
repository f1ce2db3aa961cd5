"""DINO's label propagation written the way its ``eval_video_segmentation.py`` computes it: the dense affinity of
every query cell with every context cell, multiplied by a neighbourhood mask, top-k over the context cells,
normalised. DIFT and DiTF evaluate DAVIS with this code.

It is the reference the windowed engine (:func:`ditf_core.video.affinity.propagate_labels`) is tested against
and the baseline ``bench/bench_video.py`` measures; it holds [n, hw, hw] affinities (plus the [hw, hw] mask), so
use it on small grids only.
"""

from __future__ import annotations

import torch


def neighbourhood_mask(h: int, w: int, radius: int) -> torch.Tensor:
    """[hw, hw] float: 1 where the key cell lies in the (2r+1)^2 window of the query cell (DINO's
    ``restrict_neighborhood``, vectorised)."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    return near.to(torch.float32)


def dense_masked_affinity(query: torch.Tensor, context: torch.Tensor, *, radius: int, temperature: float) -> torch.Tensor:
    """query [C, h, w], context [n, C, h, w] (unit norm) -> masked affinity [n, hw (query), hw (key)]."""
    n, channels, h, w = context.shape
    queries = query.reshape(channels, h * w).T.unsqueeze(0).repeat(n, 1, 1)  # [n, hw, C], as DINO repeats it
    affinity = torch.exp(torch.bmm(queries, context.reshape(n, channels, h * w)) / temperature)
    if radius > 0:
        affinity *= neighbourhood_mask(h, w, radius).unsqueeze(0)
    return affinity


def propagate_labels_dense(
    query: torch.Tensor, context: torch.Tensor, labels: torch.Tensor, *, radius: int, top_k: int, temperature: float
) -> torch.Tensor:
    """DINO's ``label_propagation`` (features given, unit norm): query [C, h, w], context [n, C, h, w], labels
    [n, L, h, w] -> [L, h, w]."""
    n, _, h, w = context.shape
    affinity = dense_masked_affinity(query, context, radius=radius, temperature=temperature)
    affinity = affinity.transpose(2, 1).reshape(-1, h * w)  # [n * hw (keys), hw (queries)]
    kth, _ = torch.min(torch.topk(affinity, dim=0, k=top_k).values, dim=0)
    affinity[affinity < kth] = 0
    affinity = affinity / torch.sum(affinity, dim=0, keepdim=True)
    segs = labels.reshape(n, labels.shape[1], -1).transpose(2, 1).reshape(-1, labels.shape[1]).T  # [L, n * hw]
    return torch.mm(segs, affinity).reshape(-1, h, w)
