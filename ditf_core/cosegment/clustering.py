"""K-means in torch with bounded memory: seeded greedy k-means++ initialisation, Lloyd iterations, and distances
computed in chunks of points ([chunk, K] at a time: never an N x N or N x K x C tensor).

Deterministic for a seed: every random number comes from one CPU generator, sums are accumulated in a fixed order,
and an empty cluster is re-seeded with the point farthest from its centre (ties: lowest index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DiTFInputError

CHUNK_POINTS = 8192  # rows per distance block: [8192, K] scores plus one [8192, C] slice of the points


@dataclass(frozen=True)
class KMeansResult:
    """labels: [N] long in [0, K); centres: [K, C] float32; inertia: the sum of squared distances to the centres;
    iterations: Lloyd steps run; converged: whether the assignment stopped changing before the limit."""

    labels: torch.Tensor
    centres: torch.Tensor
    inertia: float
    iterations: int
    converged: bool


def kmeans(
    points: torch.Tensor, clusters: int, *, seed: int = 0, iterations: int = 100, chunk: int = CHUNK_POINTS
) -> KMeansResult:
    """K-means of ``points`` [N, C] (float32) into ``clusters`` groups (squared Euclidean distance); distances are
    computed ``chunk`` points at a time."""
    if points.ndim != 2 or not points.is_floating_point():
        raise DiTFInputError(f"k-means needs float points [N, C], got {points.dtype} {list(points.shape)}")
    count = points.shape[0]
    if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 1:
        raise DiTFInputError(f"the number of clusters must be a whole number >= 1, got {clusters!r}")
    if clusters > count:
        raise DiTFInputError(f"{clusters} clusters asked for but only {count} feature cells to cluster; lower K")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise DiTFInputError(f"iterations must be a whole number >= 1, got {iterations!r}")
    generator = torch.Generator().manual_seed(seed)
    squared = torch.linalg.vector_norm(points, dim=1).square_()  # [N], without an [N, C] temporary
    centres = _init_plus_plus(points, squared, clusters, generator, chunk)
    labels, distances = _assign(points, squared, centres, chunk)
    converged, done = False, 0
    for done in range(1, iterations + 1):
        centres = _update(points, labels, distances, centres)
        new_labels, distances = _assign(points, squared, centres, chunk)
        if torch.equal(new_labels, labels):
            converged = True
            break
        labels = new_labels
    return KMeansResult(labels, centres, float(distances.sum(dtype=torch.float64)), done, converged)


def nearest_centres(points: torch.Tensor, centres: torch.Tensor, chunk: int = CHUNK_POINTS) -> torch.Tensor:
    """Index of the nearest centre [N] for points [N, C] and centres [K, C], in chunks of points."""
    return _assign(points, torch.linalg.vector_norm(points, dim=1).square_(), centres, chunk)[0]


def _init_plus_plus(points: torch.Tensor, squared: torch.Tensor, clusters: int, generator, chunk: int) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; 2 + log K candidates per step, as scikit-learn): each new
    centre is the candidate, drawn with probability ~ squared distance to the centres so far, that lowers the total
    the most."""
    count = points.shape[0]
    trials = 2 + int(math.log(clusters))
    first = int(torch.randint(count, (1,), generator=generator))
    chosen = [first]
    closest = _distances_to(points, squared, points[first : first + 1], chunk)[:, 0]
    for _ in range(1, clusters):
        total = float(closest.sum(dtype=torch.float64))
        if total <= 0.0:
            raise DiTFInputError(
                f"the feature cells hold only {len(chosen)} distinct vectors, fewer than the {clusters} clusters asked "
                "for; lower K"
            )
        candidates = torch.multinomial(closest.double().cpu() / total, trials, replacement=True, generator=generator)
        to_candidates = _distances_to(points, squared, points[candidates.to(points.device)], chunk)  # [N, trials]
        totals = torch.minimum(to_candidates, closest[:, None]).sum(dim=0, dtype=torch.float64)
        best = int(torch.argmin(totals))
        chosen.append(int(candidates[best]))
        closest = torch.minimum(closest, to_candidates[:, best])
    return points[chosen].clone()


def _assign(points, squared, centres, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre [N] and the squared distance to it [N], for points [N, C] with squared norms [N]."""
    labels = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    distances = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)
    for start in range(0, points.shape[0], chunk):
        part = slice(start, start + chunk)
        block = _distances_to(points[part], squared[part], centres, chunk)
        distances[part], labels[part] = block.min(dim=1)
    return labels, distances


def _distances_to(points, squared, centres, chunk: int) -> torch.Tensor:
    """Squared distances [n, K] of points [n, C] (squared norms [n]) to centres [K, C], in chunks of points."""
    centre_squared = (centres * centres).sum(dim=1)
    blocks = []
    for start in range(0, points.shape[0], chunk):
        part = slice(start, start + chunk)
        blocks.append((squared[part, None] - 2.0 * points[part] @ centres.T + centre_squared).clamp_min_(0.0))
    return torch.cat(blocks)


def _update(points, labels, distances, centres) -> torch.Tensor:
    """Mean of each cluster's points; an empty cluster takes the point farthest from its own centre."""
    clusters = centres.shape[0]
    sums = torch.zeros(clusters, points.shape[1], dtype=points.dtype, device=points.device)
    sums.index_add_(0, labels, points)  # in place: no copy of the points
    counts = torch.bincount(labels, minlength=clusters)
    updated = sums / counts.clamp_min(1)[:, None].to(points.dtype)
    spare = distances.clone()
    for empty in (counts == 0).nonzero().flatten().tolist():
        farthest = int(torch.argmax(spare))
        updated[empty] = points[farthest]
        spare[farthest] = -1.0  # each empty cluster gets a different point
    return updated
