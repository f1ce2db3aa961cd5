"""Sparse keypoint transfer: where do these source points land in the target image?

Two modes, both taking and returning ORIGINAL image pixels (through each map's :class:`PixelMapping`):

* ``"fast"`` (default): the source descriptor is read bilinearly at the sub-cell keypoint, compared (cosine)
  with every target feature cell, and the argmax is refined by a soft-argmax in a small window. Cost
  O(K * C * h * w); lands within about one feature cell of the paper's answer.
* ``"exact"``: the paper protocol's answer (official DiTF ``eval_spair.py``): both maps upsampled bilinearly to
  their original image sizes, the source vector read at the ROUNDED keypoint, cosine against every target
  pixel, argmax -> an integer target pixel. Computed in chunks of keypoints without materialising the
  upsampled maps (see :mod:`.search`): besides the points' own source vectors [K, C], memory stays bounded
  whatever the number of points. The official script runs in float16 on GPU; this computes in float32, so
  where the official answer was decided by float16 rounding between near-equal pixels the two can differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from .checks import check_pair, check_refinement, grid_mask, pixel_mask
from .points import MAX_POINTS, check_points, format_points
from .search import (
    DEFAULT_CHUNK_ELEMENTS,
    ProgressFn,
    exact_point_matches,
    nearest_cells,
    progress_part,
    sample_descriptors,
)

MODES = ("fast", "exact")


@dataclass(frozen=True)
class PointMatches:
    """Matches of K source points in each of B image pairs.

    source_points: [B, K, 2] source pixels (x, y) as matched (rounded to integers in "exact" mode).
    points: [B, K, 2] matched target pixels (x, y), float (integral in "exact" mode).
    scores: [B, K] cosine similarity of the source descriptor and the target at the match.
    cells: [B, K, 2] the match in target feature coordinates (u, v), cell j centre at u = j.
    valid: [B, K] bool, False where a point lies outside the source mask.
    """

    source_points: torch.Tensor
    points: torch.Tensor
    scores: torch.Tensor
    cells: torch.Tensor
    valid: torch.Tensor
    mode: str

    def to_json(self, index: int = 0) -> str:
        """The target points of pair ``index`` as KJNodes PointsEditor JSON."""
        return format_points(self.points[index])


def match_points(
    source: DiTFeatures,
    target: DiTFeatures,
    points,
    *,
    mode: str = "fast",
    source_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    window: int = 3,
    temperature: float = 0.02,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    point_limit: int | None = MAX_POINTS,
    progress: ProgressFn | None = None,
) -> PointMatches:
    """Transfer keypoints from each source image to its target image.

    source, target: DiTFeatures with features [B, C, h, w] and [B, C, h', w'] from the same model and layer.
    points: [K, 2] (same points for every pair) or [B, K, 2] source pixels (x, y); also KJNodes JSON.
    mode: "fast" or "exact" (see the module docstring).
    source_mask: [H, W], [B, H, W] or [B, 1, H, W] at source image (or grid) size; points outside it are
        marked invalid. target_mask: same at target size; matches may only land where it is >= 0.5.
    window, temperature: the "fast" soft-argmax refinement (window 1 or temperature 0 turn it off).
    chunk_elements: similarities held in memory at once (both modes work through the points in chunks).
    point_limit: the most points per image pair (default :data:`~.points.MAX_POINTS`; None: no limit, memory stays
        bounded by the chunks but time grows with the count).
    progress: ``progress(done, total)`` after each chunk of points; it may raise to stop (ComfyUI's Cancel).
    """
    if mode not in MODES:
        raise DiTFInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    check_refinement(window, temperature)
    source, target = check_pair(source, target)
    xy = check_points(points, source.mapping.image_size, source.batch, "points", limit=point_limit)
    if mode == "exact":
        width, height = source.mapping.image_size  # a point on the outer half-pixel rounds onto the edge pixel
        xy = torch.stack([xy[..., 0].round().clamp(0, width - 1), xy[..., 1].round().clamp(0, height - 1)], dim=-1)
        matched, scores = _match_exact(source, target, xy, target_mask, chunk_elements, progress)
        cells = target.mapping.to_feature(matched)
    else:
        cells, scores = _match_fast(source, target, xy, target_mask, window, temperature, chunk_elements, progress)
        matched = target.mapping.to_pixel(cells)
    return PointMatches(xy, matched, scores, cells, _inside_mask(source, xy, source_mask), mode)


def _match_fast(source, target, xy, target_mask, window, temperature, chunk_elements, progress):
    allowed = grid_mask(target_mask, target, "target_mask")
    uv = source.mapping.to_feature(xy)  # [B, K, 2]
    queries = F.normalize(sample_descriptors(source.features, uv), dim=-1)  # [B, K, C]
    keys = F.normalize(target.features.to(torch.float32), dim=1)
    cells, scores = [], []
    for b in range(source.batch):
        cell, score, _ = nearest_cells(
            queries[b],
            keys[b],
            None if allowed is None else allowed[b],
            window=window,
            temperature=temperature,
            chunk_elements=chunk_elements,
            progress=progress_part(progress, b, source.batch),
        )
        cells.append(cell)
        scores.append(score)
    return torch.stack(cells), torch.stack(scores)


def _match_exact(source, target, xy, target_mask, chunk_elements, progress):
    allowed = pixel_mask(target_mask, target, "target_mask")
    matched, scores = [], []
    for b in range(source.batch):
        found, score = exact_point_matches(
            source.features[b],
            xy[b],
            source.mapping.image_size,
            target.features[b],
            target.mapping.image_size,
            None if allowed is None else allowed[b],
            chunk_elements=chunk_elements,
            progress=progress_part(progress, b, source.batch),
        )
        matched.append(found.to(torch.float32))
        scores.append(score)
    return torch.stack(matched), torch.stack(scores)


def _inside_mask(source: DiTFeatures, xy: torch.Tensor, source_mask) -> torch.Tensor:
    allowed = pixel_mask(source_mask, source, "source_mask")
    if allowed is None:
        return torch.ones(xy.shape[:2], dtype=torch.bool)
    width, height = source.mapping.image_size
    x = xy[..., 0].round().long().clamp(0, width - 1)
    y = xy[..., 1].round().long().clamp(0, height - 1)
    return torch.stack([allowed[b, y[b], x[b]] for b in range(xy.shape[0])])

