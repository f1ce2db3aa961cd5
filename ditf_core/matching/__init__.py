"""Correspondence matching on DiTF features: sparse keypoint transfer and dense flow.

Tensors in, tensors out; every coordinate is in ORIGINAL image pixels (x, y), converted through each feature
map's :class:`~ditf_core.mapping.PixelMapping`.

* :func:`match_points` - keypoints of a source image -> target pixels, "fast" (feature resolution + sub-cell
  soft-argmax, default) or "exact" (the paper protocol's answer, batched and memory-bounded).
* :func:`match_dense` - every cell both ways, with cycle-consistency confidence, chunked.
* :func:`similarity_map` / :class:`PairExplorer` - one source point's cosine map over the target (the explorer).
* :func:`parse_points` / :func:`format_points` - KJNodes PointsEditor JSON.
"""

from .dense import DenseMatches, match_dense
from .explore import PairExplorer, SimilarityMap, similarity_map
from .points import format_points, parse_points
from .sparse import MODES, PointMatches, match_points

__all__ = [
    "MODES",
    "DenseMatches",
    "PairExplorer",
    "PointMatches",
    "SimilarityMap",
    "format_points",
    "match_dense",
    "match_points",
    "parse_points",
    "similarity_map",
]
