"""Warping and transfer from correspondences, built on kornia.

Images are float tensors [B, C, H, W] in [0, 1] (the ComfyUI glue converts from [B, H, W, C]); points are
ORIGINAL image pixels (x, y) with pixel centres at integers, which is kornia's ``align_corners=True`` frame.

* :func:`warp_to_target` / :func:`warp_image` - the source image laid out like the target, from dense matches
  (``kornia.geometry.transform.remap``).
* :func:`warp_tps` - thin-plate-spline warp from sparse matches (the standard spline system solved here, evaluated
  with kornia's ``warp_points_tps``; kornia's ``get_tps_transform`` puts the kernels at the other point set and is
  ill-conditioned for many points, and ``warp_image_tps`` only renders at the input's own size, so the sampling
  grid is built here at the target size and sampled with ``grid_sample``).
* :func:`fit_homography` / :func:`warp_homography` - RANSAC homography for near-planar scenes
  (``kornia.geometry.ransac.RANSAC`` + ``warp_perspective``).
* :func:`transfer_mask`, :func:`transfer_appearance` - a mask or the colours of the source carried onto the
  target's layout, weighted by match confidence.

Hand-written because kornia has no equivalent: :func:`confident_matches` (picking confident, de-duplicated
control points from a dense field), the confidence-weighted blend in :func:`transfer_appearance`, and the spline
system of :func:`warp_tps` (see ``_tps_weights``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.conversions import normalize_pixel_coordinates
from kornia.geometry.grid import create_meshgrid
from kornia.geometry.ransac import RANSAC
from kornia.geometry.transform import remap, warp_perspective, warp_points_tps

from .errors import DiTFInputError
from .matching import DenseMatches


def warp_to_target(source_image: torch.Tensor, matches: DenseMatches, *, mode: str = "bilinear") -> torch.Tensor:
    """The source image [B, C, H_s, W_s] resampled onto the target layout -> [B, C, H_t, W_t]."""
    _check_image(source_image, matches.source_mapping.image_size, "source_image")
    coords, _ = matches.target_to_source_pixels()
    return warp_image(source_image, coords, mode=mode)


def warp_image(
    image: torch.Tensor, coords: torch.Tensor, *, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """``out[b, :, y, x] = image[b, :, coords[b, 1, y, x], coords[b, 0, y, x]]`` (bilinear).

    image: [B, C, H_s, W_s]. coords: [B, 2, H_t, W_t] source pixels (x, y) for every output pixel.
    """
    _check_image(image, None, "image")
    if coords.ndim != 4 or coords.shape[1] != 2 or coords.shape[0] not in (1, image.shape[0]):
        raise DiTFInputError(f"coords must be [B, 2, H, W] source pixels (x, y), got shape {list(coords.shape)}")
    coords = coords.to(image.dtype).expand(image.shape[0], -1, -1, -1)
    # kornia normalises pixel maps with the align_corners=True convention, so it must be passed explicitly
    return remap(image, coords[:, 0], coords[:, 1], mode=mode, padding_mode=padding_mode, align_corners=True)


def confident_matches(
    matches: DenseMatches, index: int = 0, *, min_confidence: float = 1.0, max_points: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Control points from dense matches of pair ``index``: (source [K, 2], target [K, 2]) pixels.

    Keeps target cells whose cycle confidence is at least ``min_confidence`` (1.0: mutual nearest neighbours),
    drops repeated source positions, and thins to at most ``max_points`` spread over the target grid.
    """
    confidence = matches.target_confidence[index].flatten()
    source = matches.target_to_source[index].flatten(1).T  # [h*w, 2]
    h, w = matches.target_confidence.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    target = matches.target_mapping.to_pixel(torch.stack([u, v], dim=-1).reshape(-1, 2))
    keep = (confidence >= min_confidence).nonzero().flatten()
    _, first = _unique_rows(source[keep].round(decimals=3))
    keep = keep[first]
    if keep.numel() > max_points:  # an even subsample keeps the spread over the grid
        keep = keep[torch.linspace(0, keep.numel() - 1, max_points).round().long()]
    return source[keep], target[keep]


def warp_tps(
    image: torch.Tensor, source_points: torch.Tensor, target_points: torch.Tensor, *, width: int, height: int
) -> torch.Tensor:
    """Thin-plate-spline warp of ``image`` [B, C, H_s, W_s] that carries source_points [K, 2] onto
    target_points [K, 2] (pixels), rendered at ``width`` x ``height`` -> [B, C, height, width].

    Needs at least 3 non-collinear pairs; a target point given twice keeps its first pair (repeats make
    kornia's spline system singular).
    """
    _check_image(image, None, "image")
    width, height = _size(width, height)
    source, target = _check_pairs(source_points, target_points, minimum=3)
    _, first = _unique_rows(target.round(decimals=3))  # a repeated target point makes the system singular
    source, target = source[first], target[first]
    if source.shape[0] < 3:
        raise DiTFInputError("warp_tps needs at least 3 distinct point pairs")
    # Normalised coordinates keep the spline system well conditioned; solve in float64.
    src = normalize_pixel_coordinates(source.double(), image.shape[-2], image.shape[-1])[None]
    trg = normalize_pixel_coordinates(target.double(), height, width)[None]
    kernel_weights, affine_weights = _tps_weights(trg, src)
    grid = create_meshgrid(height, width, normalized_coordinates=True, dtype=torch.float64, align_corners=True)
    sample_at = warp_points_tps(grid.reshape(1, -1, 2), trg, kernel_weights, affine_weights)
    sample_at = sample_at.reshape(1, height, width, 2).to(image.dtype).expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, sample_at, mode="bilinear", padding_mode="zeros", align_corners=True)


def fit_homography(
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    *,
    threshold: float = 3.0,
    seed: int | None = 0,
    max_iterations: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RANSAC homography mapping source pixels to target pixels.

    source_points, target_points: [K, 2] pixels, K >= 5. threshold: inlier reprojection error in target pixels.
    Returns H [3, 3] (target ~ H @ source, homogeneous) and inliers [K] bool.
    """
    source, target = _check_pairs(source_points, target_points, minimum=5)
    if not threshold > 0:
        raise DiTFInputError(f"threshold must be a positive number of pixels, got {threshold!r}")
    ransac = RANSAC(model_type="homography", inl_th=float(threshold), max_iter=max_iterations, seed=seed)
    homography, inliers = ransac(source, target)
    if not torch.any(homography != 0):
        raise DiTFInputError(
            "RANSAC found no homography with enough inliers; the scene may not be near-planar - use warp_tps "
            "or warp_to_target, or raise threshold"
        )
    return homography / homography[2, 2], inliers


def warp_homography(image: torch.Tensor, homography: torch.Tensor, *, width: int, height: int) -> torch.Tensor:
    """``image`` [B, C, H_s, W_s] warped by a source->target pixel homography [3, 3] or [B, 3, 3], rendered at
    ``width`` x ``height`` -> [B, C, height, width]."""
    _check_image(image, None, "image")
    width, height = _size(width, height)
    if homography.shape[-2:] != (3, 3) or homography.ndim not in (2, 3):
        raise DiTFInputError(f"homography must be [3, 3] or [B, 3, 3], got shape {list(homography.shape)}")
    matrix = homography.to(image.dtype).reshape(-1, 3, 3).expand(image.shape[0], -1, -1)
    return warp_perspective(image, matrix, (height, width), align_corners=True)


def transfer_mask(
    mask: torch.Tensor, matches: DenseMatches, *, min_confidence: float = 0.0, threshold: float | None = None
) -> torch.Tensor:
    """A source mask [B, 1, H_s, W_s] or [B, H_s, W_s] carried onto the target layout -> [B, 1, H_t, W_t].

    Target pixels whose match confidence is below ``min_confidence`` get 0; ``threshold`` (e.g. 0.5) turns the
    soft result into a binary mask.
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    _check_image(mask, matches.source_mapping.image_size, "mask")
    coords, confidence = matches.target_to_source_pixels()
    warped = warp_image(mask.to(torch.float32), coords)
    warped = warped * (confidence >= min_confidence).unsqueeze(1)
    return warped if threshold is None else (warped >= threshold).to(warped.dtype)


def transfer_appearance(
    source_image: torch.Tensor, target_image: torch.Tensor, matches: DenseMatches, *, strength: float = 1.0
) -> torch.Tensor:
    """The target's structure with the source's colours and texture: each target pixel moves towards the
    colour of its source match by ``strength * confidence`` -> [B, C, H_t, W_t] in [0, 1]."""
    _check_image(target_image, matches.target_mapping.image_size, "target_image")
    if not 0.0 <= strength <= 1.0:
        raise DiTFInputError(f"strength must lie in [0, 1], got {strength!r}")
    warped = warp_to_target(source_image, matches)
    _, confidence = matches.target_to_source_pixels()
    weight = strength * confidence.unsqueeze(1).to(warped.dtype)
    return (target_image + weight * (warped - target_image)).clamp(0.0, 1.0)


def _tps_weights(centres: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard thin-plate spline f with f(centres[k]) = values[k] and its kernels AT the centres:
    (kernel weights [1, K, 2], affine weights [1, 3, 2]) in the layout kornia's ``warp_points_tps(points, centres,
    ...)`` evaluates.

    Not kornia's ``get_tps_transform(centres, values)``: that places the kernels at ``values`` while interpolating at
    ``centres``, a non-symmetric system that is ill-conditioned for many points (a plain translation through 100
    random control points came out visibly bent).
    """
    count = centres.shape[1]
    squared = torch.cdist(centres, centres).square()
    kernel = torch.where(squared > 0, 0.5 * squared * squared.clamp_min(1e-300).log(), torch.zeros_like(squared))
    affine = torch.cat([torch.ones_like(centres[..., :1]), centres], dim=-1)  # [1, K, 3]: 1, x, y
    system = torch.cat([
        torch.cat([kernel, affine], dim=-1),
        torch.cat([affine.transpose(1, 2), centres.new_zeros(1, 3, 3)], dim=-1),
    ], dim=1)
    solution = torch.linalg.solve(system, torch.cat([values, values.new_zeros(1, 3, 2)], dim=1))
    return solution[:, :count], solution[:, count:]


def _check_image(image, size: tuple[int, int] | None, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        got = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise TypeError(
            f"{name} must be a float tensor [B, C, H, W] (ComfyUI IMAGE is [B, H, W, C]: permute it), got {got}"
        )
    if size is not None and (image.shape[-1], image.shape[-2]) != tuple(size):
        raise DiTFInputError(
            f"{name} is {image.shape[-1]}x{image.shape[-2]} but the matches were made for a {size[0]}x{size[1]} "
            "image; pass the image the features were extracted from"
        )


def _check_pairs(source, target, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    for name, points in (("source_points", source), ("target_points", target)):
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[-1] != 2:
            raise DiTFInputError(f"{name} must be a [K, 2] tensor of (x, y) pixels")
        if not torch.isfinite(points).all():
            raise DiTFInputError(f"{name} contains NaN or infinite values")
    if source.shape != target.shape:
        raise DiTFInputError(f"source_points {list(source.shape)} and target_points {list(target.shape)} must pair up")
    if source.shape[0] < minimum:
        raise DiTFInputError(f"need at least {minimum} point pairs, got {source.shape[0]}")
    return source.to(torch.float32), target.to(torch.float32)


def _size(width, height) -> tuple[int, int]:
    """The output size, by name: a (W, H) tuple in one argument was too easy to pass as (H, W)."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
            raise DiTFInputError(f"{name} must be a positive whole number of pixels, got {value!r}")
    return int(width), int(height)


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows and the index of each one's first occurrence, in order of first occurrence."""
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), rows.shape[0], dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(rows.shape[0]), reduce="amin")
    first = first.sort().values
    return rows[first], first
