"""Co-segmentation: the feature cells of a whole batch clustered together, so cluster j is the same kind of part in
every image (the same object or part across images, as SD-DINO and DIFT show with K-means on their features).

Cells are L2-normalised first (by default): matching compares DiTF features by cosine, and their magnitudes vary
from cell to cell, so clusters should follow directions, not lengths (K-means on unit vectors ~ spherical
K-means). Cluster ids are ordered by size over the whole batch, largest first (ties: the cluster whose first cell
comes first), so a seed always gives the same ids.

Foreground: only cells inside a MASK (at least half of a cell's pixels) are clustered; the rest get label -1 and
belong to no cluster. Other foreground sources plug in as a function ``features -> bool [B, h, w]`` (the hook for
the massive-activation foreground of "Few Channels Draw The Whole Picture": K = 2 on the massive channels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..mapping import PixelMapping
from ..matching.checks import check_features, grid_mask
from ..matching.draw import point_colours
from .clustering import kmeans

ForegroundFn = Callable[[DiTFeatures], torch.Tensor]  # features -> bool [B, h, w]: the cells to cluster
BACKGROUND = -1
MAX_CLUSTERS = 64


@dataclass(frozen=True)
class CoSegmentation:
    """K clusters over the cells of a batch of images.

    labels: one [h, w] long map per image (cluster id in [0, K), -1 outside the foreground); mappings: each image's
    pixel <-> cell mapping; centres: [K, C] cluster centres (in the normalised space when ``normalize``);
    sizes: [K] cells per cluster over all images (descending); iterations / converged: of the K-means.
    """

    labels: tuple[torch.Tensor, ...]
    mappings: tuple[PixelMapping, ...]
    centres: torch.Tensor
    sizes: torch.Tensor
    iterations: int
    converged: bool

    @property
    def clusters(self) -> int:
        return self.centres.shape[0]

    @property
    def images(self) -> int:
        return len(self.labels)

    def pixel_labels(self, index: int) -> torch.Tensor:
        """Image ``index``'s labels at its ORIGINAL size [H, W]: each pixel takes the label of the cell that
        contains its centre (the mapping's convention: pixel x lies in cell floor((x + 0.5) w / W))."""
        width, height = self.mappings[index].image_size
        grid = self.labels[index][None, None].to(torch.float32)
        return F.interpolate(grid, size=(height, width), mode="nearest-exact")[0, 0].round().to(torch.long)

    def masks(self, index: int) -> torch.Tensor:
        """Image ``index``'s K cluster masks [K, H, W] float32 (1 inside the cluster) at its original size."""
        pixels = self.pixel_labels(index)
        return (pixels[None] == torch.arange(self.clusters)[:, None, None]).to(torch.float32)

    def preview(self, index: int, pixels: torch.Tensor | None = None, *, opacity: float = 0.55) -> torch.Tensor:
        """Image ``index`` [3, H, W] in [0, 1] with each cluster in its colour (the same colour for the same id in
        every image) laid over ``pixels`` [3, H, W] when given; cells outside the foreground are dimmed grey."""
        labels = self.pixel_labels(index)
        palette = torch.tensor(point_colours(self.clusters), dtype=torch.float32).T / 255.0  # [3, K]
        colour = palette[:, labels.clamp_min(0)]
        inside = (labels >= 0)[None]
        if pixels is None:
            return torch.where(inside, colour, torch.full_like(colour, 0.5))
        base = pixels.to(torch.float32).clamp(0.0, 1.0)
        if base.shape != colour.shape:
            raise DiTFInputError(f"the preview image is {list(base.shape)} but the labels are {list(colour.shape)}")
        blended = (1.0 - opacity) * base + opacity * colour
        grey = 0.35 + 0.3 * base.mean(dim=0, keepdim=True).expand_as(base)
        return torch.where(inside, blended, grey)


def cosegment(
    features: DiTFeatures | Sequence[DiTFeatures],
    clusters: int,
    *,
    foreground: torch.Tensor | Sequence[torch.Tensor | None] | ForegroundFn | None = None,
    seed: int = 0,
    iterations: int = 100,
    normalize: bool = True,
) -> CoSegmentation:
    """Cluster every (foreground) cell of every image into ``clusters`` groups, jointly.

    features: one DiTFeatures batch, or several (say one per image, of different sizes) with the same channels.
    foreground: None (all cells); a MASK [B or 1, H, W] at image or grid size (one per feature map when several);
    or a function ``features -> bool [B, h, w]``. seed / iterations: of the K-means (k-means++ init).
    """
    maps = [features] if isinstance(features, DiTFeatures) else list(features)
    if not maps:
        raise DiTFInputError("no features to co-segment")
    maps = [check_features(m, "features" if len(maps) == 1 else f"features[{i}]") for i, m in enumerate(maps)]
    if len({m.channels for m in maps}) > 1:
        raise DiTFInputError(
            f"the feature maps have {sorted({m.channels for m in maps})} channels; co-segment features extracted "
            "(and fused) the same way"
        )
    _check_clusters(clusters)
    allowed = _foreground_cells(maps, foreground)
    parts = [_cells(m.features, keep) for m, keep in zip(maps, allowed)]
    points = parts[0] if len(parts) == 1 else torch.cat(parts)  # the one [N, C] copy of the cells
    if points.shape[0] < clusters:
        where = "inside the foreground" if foreground is not None else "in the features"
        raise DiTFInputError(
            f"clusters={clusters} but there are only {points.shape[0]} feature cells {where}; lower clusters to at "
            f"most {points.shape[0]} (or extract at a higher resolution)"
        )
    if normalize:  # in place: the copy above is ours
        points.div_(points.norm(dim=1, keepdim=True).clamp_min(1e-12))
    result = kmeans(points, clusters, seed=seed, iterations=iterations)
    order, sizes = _size_order(result.labels, clusters)
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(clusters)
    labels = _label_maps(maps, allowed, relabel[result.labels])
    mappings = tuple(m.mapping for m in maps for _ in range(m.batch))
    return CoSegmentation(labels, mappings, result.centres[order], sizes, result.iterations, result.converged)


def _check_clusters(clusters) -> None:
    if isinstance(clusters, bool) or not isinstance(clusters, int) or not 2 <= clusters <= MAX_CLUSTERS:
        raise DiTFInputError(f"clusters must be a whole number in [2, {MAX_CLUSTERS}], got {clusters!r}")


def _foreground_cells(maps: list[DiTFeatures], foreground) -> list[torch.Tensor | None]:
    """One bool [B, h, w] (or None: every cell) per feature map."""
    if foreground is None:
        return [None] * len(maps)
    if callable(foreground) and not isinstance(foreground, torch.Tensor):
        cells = [foreground(m) for m in maps]
        for m, keep in zip(maps, cells):
            if not isinstance(keep, torch.Tensor) or tuple(keep.shape) != (m.batch, *m.grid):
                raise DiTFInputError(f"the foreground function must return bool [B, h, w] = {[m.batch, *m.grid]}")
        return [keep.to("cpu", torch.bool) for keep in cells]
    masks = [foreground] if isinstance(foreground, torch.Tensor) else list(foreground)
    if len(masks) != len(maps):
        raise DiTFInputError(f"{len(masks)} foreground masks for {len(maps)} feature maps; give one per feature map")
    name = "foreground" if len(maps) == 1 else "foreground[{}]"
    return [None if mask is None else grid_mask(mask, m, name.format(i))
            for i, (m, mask) in enumerate(zip(maps, masks))]


def _cells(maps: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Feature maps [B, C, h, w] -> the kept cells as rows [n, C] float32 on the CPU (image by image, row-major)."""
    rows = maps.detach().to("cpu", torch.float32).permute(0, 2, 3, 1)
    if keep is not None:
        return rows[keep]  # boolean indexing copies
    return rows.clone(memory_format=torch.contiguous_format).view(-1, maps.shape[1])  # exactly one copy, always ours


def _size_order(labels: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ids by size, largest first; ties by first appearance. Returns (old ids in new order, sizes)."""
    sizes = torch.bincount(labels, minlength=clusters)
    first = torch.full((clusters,), labels.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(labels.shape[0]), reduce="amin")
    order = sorted(range(clusters), key=lambda c: (-int(sizes[c]), int(first[c])))
    order = torch.tensor(order, dtype=torch.long)
    return order, sizes[order]


def _label_maps(maps: list[DiTFeatures], allowed, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cluster ids of the kept cells -> one [h, w] label map per image (-1 where a cell was not kept)."""
    out, start = [], 0
    for m, keep in zip(maps, allowed):
        h, w = m.grid
        keep = torch.ones(m.batch, h, w, dtype=torch.bool) if keep is None else keep
        full = torch.full((m.batch, h, w), BACKGROUND, dtype=torch.long)
        count = int(keep.sum())
        full[keep] = labels[start : start + count]
        start += count
        out.extend(full.unbind(0))
    return tuple(out)
