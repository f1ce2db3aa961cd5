"""Dense correspondence: for every feature cell of one image, its best match in the other, both ways.

Similarities are computed in chunks of query cells (see :func:`.search.nearest_cells`), so two 64 x 64 maps of
3072 channels (1024 px Flux) match without ever holding the 4096 x 4096 similarity matrix.

Confidence comes from cycle consistency: follow a target cell to its source match and back; the distance (in
target cells) between where it started and where it returns is the cycle error, mapped linearly to [0, 1]
(0 cells -> 1, ``cycle_tolerance`` cells or more -> 0). Mutual nearest neighbours have confidence 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..mapping import PixelMapping
from .checks import check_pair, check_refinement, grid_mask
from .search import DEFAULT_CHUNK_ELEMENTS, ProgressFn, nearest_cells, progress_part


@dataclass(frozen=True)
class DenseMatches:
    """Dense matches of B image pairs, in ORIGINAL image pixels.

    target_to_source: [B, 2, h_t, w_t] for each target cell, the source pixel (x, y) it comes from.
    target_confidence: [B, h_t, w_t] cycle-consistency confidence in [0, 1] (0 outside the target mask).
    target_scores: [B, h_t, w_t] cosine similarity of each target cell with its source match.
    source_to_target, source_confidence, source_scores: the same from the source side ([B, 2, h_s, w_s] ...).
    source_mapping, target_mapping: the pixel <-> feature mappings of the two images.
    """

    target_to_source: torch.Tensor
    target_confidence: torch.Tensor
    target_scores: torch.Tensor
    source_to_target: torch.Tensor
    source_confidence: torch.Tensor
    source_scores: torch.Tensor
    source_mapping: PixelMapping
    target_mapping: PixelMapping

    def target_to_source_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For every target PIXEL: source pixel (x, y) [B, 2, H_t, W_t] and confidence [B, H_t, W_t].

        Bilinear upsampling (align_corners=False), consistent with the pixel <-> feature mapping."""
        return _to_pixels(self.target_to_source, self.target_confidence, self.target_mapping)

    def source_to_target_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For every source PIXEL: target pixel (x, y) [B, 2, H_s, W_s] and confidence [B, H_s, W_s]."""
        return _to_pixels(self.source_to_target, self.source_confidence, self.source_mapping)


def match_dense(
    source: DiTFeatures,
    target: DiTFeatures,
    *,
    source_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    window: int = 3,
    temperature: float = 0.02,
    cycle_tolerance: float = 2.0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    progress: ProgressFn | None = None,
) -> DenseMatches:
    """Match every cell of ``target`` to ``source`` and every cell of ``source`` to ``target``.

    source, target: DiTFeatures [B, C, h_s, w_s] and [B, C, h_t, w_t] from the same model and layer.
    source_mask / target_mask: [H, W], [B, H, W] or [B, 1, H, W] at image (or grid) size; cells outside a mask
        are neither matched from (confidence 0) nor matched to.
    window, temperature: soft-argmax refinement of each match (window 1 or temperature 0 turn it off).
    cycle_tolerance: cycle error in target (resp. source) cells at which confidence reaches 0; > 0.
    progress: ``progress(done, total)`` after each chunk of cells; it may raise to stop (ComfyUI's Cancel).
    """
    check_refinement(window, temperature)
    if not isinstance(cycle_tolerance, (int, float)) or not cycle_tolerance > 0:
        raise DiTFInputError(f"cycle_tolerance must be a positive number of cells, got {cycle_tolerance!r}")
    source, target = check_pair(source, target)
    source_allowed = grid_mask(source_mask, source, "source_mask")
    target_allowed = grid_mask(target_mask, target, "target_mask")
    source_keys = F.normalize(source.features.to(torch.float32), dim=1)
    target_keys = F.normalize(target.features.to(torch.float32), dim=1)
    search = dict(window=window, temperature=temperature, chunk_elements=chunk_elements)
    fields = {name: [] for name in ("t2s", "t_conf", "t_score", "s2t", "s_conf", "s_score")}
    for b in range(source.batch):
        s_allowed = None if source_allowed is None else source_allowed[b]
        t_allowed = None if target_allowed is None else target_allowed[b]
        uv_in_source, t_score, t_index = nearest_cells(_cells(target_keys[b]), source_keys[b], s_allowed, **search,
                                                       progress=progress_part(progress, 2 * b, 2 * source.batch))
        uv_in_target, s_score, s_index = nearest_cells(_cells(source_keys[b]), target_keys[b], t_allowed, **search,
                                                       progress=progress_part(progress, 2 * b + 1, 2 * source.batch))
        t_conf = _cycle_confidence(t_index, s_index, target.grid, cycle_tolerance, t_allowed)
        s_conf = _cycle_confidence(s_index, t_index, source.grid, cycle_tolerance, s_allowed)
        fields["t2s"].append(_as_map(source.mapping.to_pixel(uv_in_source), target.grid))
        fields["s2t"].append(_as_map(target.mapping.to_pixel(uv_in_target), source.grid))
        fields["t_conf"].append(t_conf)
        fields["s_conf"].append(s_conf)
        fields["t_score"].append(t_score.reshape(target.grid))
        fields["s_score"].append(s_score.reshape(source.grid))
    stacked = {name: torch.stack(values) for name, values in fields.items()}
    return DenseMatches(
        target_to_source=stacked["t2s"],
        target_confidence=stacked["t_conf"],
        target_scores=stacked["t_score"],
        source_to_target=stacked["s2t"],
        source_confidence=stacked["s_conf"],
        source_scores=stacked["s_score"],
        source_mapping=source.mapping,
        target_mapping=target.mapping,
    )


def _cells(keys: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [h * w, C] query rows (row-major cells)."""
    return keys.reshape(keys.shape[0], -1).T


def _as_map(xy: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[h * w, 2] -> [2, h, w]."""
    return xy.T.reshape(2, *grid)


def _cycle_confidence(forward, backward, grid, tolerance, allowed) -> torch.Tensor:
    """Cells of a grid [h, w]: forward[p] is p's match on the other side, backward[q] that cell's match back.
    Returns confidence [h, w] = clamp(1 - |p - backward[forward[p]]| / tolerance, 0, 1)."""
    h, w = grid
    start = torch.arange(h * w)
    back = backward[forward]
    error = torch.hypot((back % w - start % w).float(), (back // w - start // w).float())
    confidence = (1.0 - error / tolerance).clamp(0.0, 1.0).reshape(h, w)
    return confidence if allowed is None else confidence * allowed


def _to_pixels(coords: torch.Tensor, confidence: torch.Tensor, mapping: PixelMapping):
    width, height = mapping.image_size
    size = (height, width)
    coords = F.interpolate(coords, size=size, mode="bilinear", align_corners=False)
    confidence = F.interpolate(confidence.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return coords, confidence.squeeze(1)
