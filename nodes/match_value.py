"""DITF_MATCH: what Correspondence Match computes and hands to Warp / Appearance Transfer, and what the node shows
(target points as KJNodes JSON, match pictures, the UI entries the point editor reads).

Pairs: image i of the source features is matched with image i of the target features; a batch of one on either
side is shared by every image of the other. All coordinates are ORIGINAL image pixels (x, y), pixel centres at
integers. No ComfyUI import (tested without it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..ditf_core.errors import DiTFInputError
from ..ditf_core.features import DiTFeatures
from ..ditf_core.images import tensor_to_pil
from ..ditf_core.matching import DenseMatches, PointMatches, match_dense, match_points, parse_points
from ..ditf_core.matching.checks import check_features, check_pair, pixel_mask
from ..ditf_core.matching.draw import draw_matches
from ..ditf_core.matching.points import format_points
from ..ditf_core.matching.search import ProgressFn, progress_part
from .images_io import check_image_size, pick

MAX_MASK_POINTS = 256
_CANDIDATES = 16384  # mask pixels considered when spreading points (a strided subset of larger masks)
_BOUNDARY = 4096  # boundary pixels the interior distance is measured to (strided subset)


@dataclass(frozen=True)
class CorrespondenceMatch:
    """The DITF_MATCH value: B matched image pairs.

    dense: both directions for every feature cell, with cycle-consistency confidence ([B, ...], see
    ``ditf_core.matching.DenseMatches``); sparse: the source points and their target matches ([B, K, 2]);
    features: the settings both feature maps share (family, layer, mode, model), for messages and reports.
    """

    dense: DenseMatches
    sparse: PointMatches
    features: dict

    @property
    def pairs(self) -> int:
        return int(self.dense.target_confidence.shape[0])

    @property
    def mode(self) -> str:
        return self.sparse.mode

    @property
    def source_size(self) -> tuple[int, int]:
        """(W, H) of the source images."""
        return tuple(self.dense.source_mapping.image_size)

    @property
    def target_size(self) -> tuple[int, int]:
        """(W, H) of the target images."""
        return tuple(self.dense.target_mapping.image_size)

    def pair(self, index: int) -> DenseMatches:
        """The dense matches of pair ``index`` as a batch of one."""
        if not 0 <= index < self.pairs:
            raise IndexError(f"pair {index} out of range for {self.pairs} matched pairs")
        d, part = self.dense, slice(index, index + 1)
        return replace(d, target_to_source=d.target_to_source[part], target_confidence=d.target_confidence[part],
                       target_scores=d.target_scores[part], source_to_target=d.source_to_target[part],
                       source_confidence=d.source_confidence[part], source_scores=d.source_scores[part])


def match_features(
    source: DiTFeatures,
    target: DiTFeatures,
    points,
    *,
    source_pixels: torch.Tensor,
    target_pixels: torch.Tensor,
    mode: str = "fast",
    source_mask: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    max_points: int = 8,
    cycle_tolerance: float = 2.0,
    progress: ProgressFn | None = None,
) -> CorrespondenceMatch:
    """Match the source images to the target images, sparse (``points``) and dense.

    source_pixels / target_pixels: [B, 3, H, W], the images the features were extracted from (checked).
    points: KJNodes PointsEditor JSON (or anything ``parse_points`` reads), the same points for every pair; empty
        with a ``source_mask``: up to ``max_points`` points spread evenly inside each source mask.
    source_mask: [B or 1, H_s, W_s]: points outside it are marked invalid, and dense matches only come from and go
        to its cells. target_mask: [B or 1, H_t, W_t]: where matches may land.
    progress: ``progress(done, total)`` through the sparse then the dense search (each half of the total), after
        every chunk; it may raise to stop (the node passes ComfyUI's progress bar, which honours Cancel).
    """
    source, target = check_features(source, "source"), check_features(target, "target")
    _check_images(source_pixels, source, "source")
    _check_images(target_pixels, target, "target")
    source, target = pair_features(source, target)
    xy = parse_points(points)
    if xy.shape[0] == 0:
        if source_mask is None:
            raise DiTFInputError(
                "points is empty: click points on the source image (or type KJNodes JSON like "
                '[{"x": 120, "y": 80}]), or connect a source_mask to pick points inside it'
            )
        allowed = pixel_mask(source_mask, source, "source_mask")
        xy = _same_count([points_in_mask(allowed[b], max_points) for b in range(source.batch)])
    sparse = match_points(source, target, xy, mode=mode, source_mask=source_mask, target_mask=target_mask,
                          progress=progress_part(progress, 0, 2))
    dense = match_dense(source, target, source_mask=source_mask, target_mask=target_mask,
                        cycle_tolerance=cycle_tolerance, progress=progress_part(progress, 1, 2))
    shared = {key: source.settings.get(key) for key in ("family", "layer", "mode", "t", "resolution")}
    model = source.settings.get("model")
    shared["model"] = model.get("name") if isinstance(model, dict) else None
    return CorrespondenceMatch(dense, sparse, shared)


def pair_features(source: DiTFeatures, target: DiTFeatures) -> tuple[DiTFeatures, DiTFeatures]:
    """Equal batches as they are; a batch of one shared by every image of the other side; else a clear error."""
    if source.batch != target.batch and 1 not in (source.batch, target.batch):
        raise DiTFInputError(
            f"source features hold {source.batch} images but target features {target.batch}; pairs are matched in "
            "order (image i with image i), so give both the same number of images, or one image on either side to "
            "match it with every image of the other"
        )
    check_pair(source.select(0), target.select(0))  # different models / layers fail here, before any work
    count = max(source.batch, target.batch)
    return _repeat(source, count), _repeat(target, count)


def points_in_mask(allowed: torch.Tensor, count: int) -> torch.Tensor:
    """Up to ``count`` pixels (x, y) [K, 2] spread evenly inside ``allowed`` [H, W] (bool), away from its edges.

    Farthest-point sampling that counts the mask's boundary (and the image border) as already chosen: the first
    point is the most interior pixel, each next one the pixel farthest from the boundary and the points so far.
    Deterministic.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_MASK_POINTS:
        raise DiTFInputError(f"max_points must be an integer in [1, {MAX_MASK_POINTS}], got {count!r}")
    inside = allowed.to(torch.bool)
    candidates = _strided(inside.nonzero().flip(-1).float(), _CANDIDATES)  # (x, y)
    if candidates.shape[0] == 0:
        raise DiTFInputError("source_mask allows no pixel; use a mask that covers part of the image (values >= 0.5)")
    padded = torch.nn.functional.pad(inside, (1, 1, 1, 1), value=False)
    edge = inside & ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    boundary = _strided(edge.nonzero().flip(-1).float(), _BOUNDARY)
    # distance to the boundary, 1 px added so that the boundary's own pixels count; in chunks (bounded memory)
    distance = torch.cat([torch.cdist(rows, boundary).min(dim=1).values for rows in candidates.split(1024)]) + 1.0
    chosen = []
    for _ in range(min(count, candidates.shape[0])):
        best = int(torch.argmax(distance))
        if distance[best] <= 0:
            break
        chosen.append(best)
        distance = torch.minimum(distance, (candidates - candidates[best]).norm(dim=1))
    return candidates[chosen]


def target_points_json(match: CorrespondenceMatch, index: int = 0) -> str:
    """The matched target points of pair ``index`` as KJNodes PointsEditor JSON; points outside the source mask
    (invalid) are left out, so the list can feed point-prompted nodes directly."""
    sparse = match.sparse
    return format_points(sparse.points[index][sparse.valid[index]])


def match_pictures(match: CorrespondenceMatch, source_pixels: torch.Tensor, target_pixels: torch.Tensor) -> list:
    """One picture per pair (PIL): source and target side by side, each point and its match in one colour, joined by
    a line; points outside the source mask drawn hollow. source_pixels / target_pixels: [B or 1, 3, H, W]."""
    sparse = match.sparse
    pictures = []
    for i in range(match.pairs):
        source = tensor_to_pil(source_pixels[pick(i, source_pixels.shape[0])])
        target = tensor_to_pil(target_pixels[pick(i, target_pixels.shape[0])])
        pictures.append(draw_matches(source, target, sparse.source_points[i], sparse.points[i], valid=sparse.valid[i]))
    return pictures


def ui_entry(match: CorrespondenceMatch, index: int, *, explorer: str | None, source_image: dict,
             target_image: dict) -> dict:
    """What the point editor reads for pair ``index`` (one element of the ``ditf_match`` UI list).

    explorer: the live explorer's id for this pair (``explorer_cache.remember``), None when not kept;
    source_image / target_image: the saved previews as ``{"filename", "subfolder", "type"}``.
    """
    sparse = match.sparse
    source_w, source_h = match.source_size
    target_w, target_h = match.target_size
    grid_w, grid_h = match.dense.target_mapping.grid_size
    return {
        "explorer": explorer,
        "mode": match.mode,
        "source": {"image": dict(source_image), "width": source_w, "height": source_h,
                   "points": _pairs(sparse.source_points[index])},
        "target": {"image": dict(target_image), "width": target_w, "height": target_h,
                   "points": _pairs(sparse.points[index]),
                   "scores": [round(float(s), 4) for s in sparse.scores[index]]},
        "valid": [bool(v) for v in sparse.valid[index]],
        "grid": [int(grid_w), int(grid_h)],
    }


def _check_images(pixels: torch.Tensor, features: DiTFeatures, side: str) -> None:
    name = f"{side}_image"
    if pixels.shape[0] != features.batch:
        raise DiTFInputError(
            f"{name} holds {pixels.shape[0]} images but the {side} features {features.batch}; connect the IMAGE "
            f"that went into the Extract DiTF Features node of the {side} features"
        )
    check_image_size(pixels, features.mapping.image_size, name, f"the {side} features were extracted from images of")


def _repeat(features: DiTFeatures, count: int) -> DiTFeatures:
    if features.batch == count:
        return features
    return replace(features, features=features.features.expand(count, -1, -1, -1))


def _same_count(point_sets: list[torch.Tensor]) -> torch.Tensor:
    """Per-pair point sets -> [B, K, 2] with K the smallest count (farthest-point order: the first K are spread)."""
    count = min(points.shape[0] for points in point_sets)
    return torch.stack([points[:count] for points in point_sets])


def _strided(rows: torch.Tensor, limit: int) -> torch.Tensor:
    if rows.shape[0] <= limit:
        return rows
    return rows[torch.linspace(0, rows.shape[0] - 1, limit).round().long()]


def _pairs(points: torch.Tensor) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points.tolist()]
