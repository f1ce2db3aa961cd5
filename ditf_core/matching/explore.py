"""One source point against a whole target map: the similarity heatmap behind the live correspondence explorer.

:func:`similarity_map` answers "where does this source pixel land, and how sure is it?" with the full cosine map
over the target's feature cells, so a UI can draw it as a heatmap. Its best match is the one
:func:`~ditf_core.matching.match_points` gives in mode ``"fast"`` for the same point (same bilinear source
descriptor, same argmax, same sub-cell soft-argmax), so the explorer and the Correspondence Match node agree.
:class:`PairExplorer` checks and prepares a pair once, then answers each point with one [C] x [C, h*w] product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from .checks import check_pair, check_refinement
from .points import check_points
from .search import window_soft_argmax, sample_descriptors  # the refinement match mode "fast" uses


@dataclass(frozen=True)
class SimilarityMap:
    """similarity: [h, w] cosine of the source descriptor with every target feature cell.
    best: (x, y) best match in ORIGINAL target pixels (sub-cell refined). cell: (u, v) the same in feature
    coordinates. score: cosine at the argmax cell."""

    similarity: torch.Tensor
    best: tuple[float, float]
    cell: tuple[float, float]
    score: float

    def heat(self) -> torch.Tensor:
        """The similarity stretched to [0, 1] (min -> 0, max -> 1), as :func:`~.draw.heatmap_overlay` shows it."""
        low, high = self.similarity.min(), self.similarity.max()
        return (self.similarity - low) / (high - low).clamp_min(1e-8)


def similarity_map(
    source: DiTFeatures,
    target: DiTFeatures,
    xy,
    *,
    index: int = 0,
    window: int = 3,
    temperature: float = 0.02,
) -> SimilarityMap:
    """Cosine similarity of the source descriptor at pixel ``xy`` with every cell of the target map.

    source, target: DiTFeatures of one pair (image ``index`` of each batch). xy: (x, y) in ORIGINAL source pixels,
    inside the image (-0.5 <= x <= W - 0.5). window, temperature: the soft-argmax refinement of the best match,
    as in :func:`~ditf_core.matching.match_points` (window 1 or temperature 0 turn it off).
    For many points of one pair, build a :class:`PairExplorer` once and call it per point.
    """
    return PairExplorer(source, target, index=index, window=window, temperature=temperature)(xy)


class PairExplorer:
    """One pair, checked and prepared once (unit target vectors [C, h*w], a copy the size of the target map);
    each call then costs one [C] x [C, h*w] product: ~0.5 ms for 40 x 40 x 3072 on a CPU."""

    def __init__(
        self, source: DiTFeatures, target: DiTFeatures, *, index: int = 0, window: int = 3, temperature: float = 0.02
    ) -> None:
        check_refinement(window, temperature)
        self.source, self.target = check_pair(source.select(index), target.select(index))
        self.window, self.temperature = window, temperature
        keys = self.target.features[0].to(torch.float32)
        self.grid = tuple(keys.shape[-2:])  # (h, w)
        self.keys = F.normalize(keys.reshape(keys.shape[0], -1), dim=0)

    def __call__(self, xy) -> SimilarityMap:
        """The similarity map of source pixel ``xy`` = (x, y)."""
        point = torch.as_tensor(xy, dtype=torch.float32).reshape(-1)
        if point.numel() != 2:
            raise DiTFInputError(f"xy must be one (x, y) point, got {point.numel()} numbers")
        point = check_points(point[None], self.source.mapping.image_size, 1, "xy")  # [1, 1, 2]: finite, inside
        uv = self.source.mapping.to_feature(point)
        query = F.normalize(sample_descriptors(self.source.features, uv)[0, 0], dim=0)  # [C]
        similarity = query @ self.keys  # [h*w]
        h, w = self.grid
        best = similarity.argmax()
        if self.window > 1 and self.temperature > 0:
            cell = window_soft_argmax(similarity[None], best[None], (h, w), self.window, self.temperature)[0]
        else:
            cell = torch.stack([best % w, best // w]).to(torch.float32)
        pixel = self.target.mapping.to_pixel(cell)
        return SimilarityMap(
            similarity.reshape(h, w),
            (float(pixel[0]), float(pixel[1])),
            (float(cell[0]), float(cell[1])),
            float(similarity[best]),
        )
