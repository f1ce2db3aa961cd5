"""The layer finder: which block and which t give the most faithful correspondences on the user's own images?

For each image, N known warps (:mod:`.warps`) are made; for each t of a small grid, ONE early-exit capture of the
image and its warps covers every block (the host's ``extract(pixels, t)``), each block's features match a grid of
source points into every warp with ``fast`` matching, and the matches are scored against the known homography:
PCK@0.05 / 0.10 (a match is correct within alpha x the image's long side). The best (layer, t) maximises PCK@0.10,
ties broken by PCK@0.05. No labelled dataset is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..matching import match_points
from ..recipe import ProgressFn, check_timestep
from .result import ALPHAS, LayerSearch
from .warps import grid_points, inside, make_warps

DEFAULT_TS = (0.1, 0.26, 0.5)
DEFAULT_WARPS = 4
MIN_SIDE = 32  # pixels: smaller images hold too few feature cells to score matching
MIN_CELLS = 4  # feature cells per side the model must give the smallest image

# extract(pixels [B, 3, H, W] in [0, 1], t) -> {global block index: DiTFeatures [B, C, h, w]}, from ONE early-exit
# capture per ensemble draw that covers every block the search scores.
Extractor = Callable[[torch.Tensor, float], dict[int, DiTFeatures]]


def find_layer(
    extract: Extractor,
    images: Sequence[torch.Tensor],
    *,
    ts: Sequence[float] = DEFAULT_TS,
    warps: int = DEFAULT_WARPS,
    seed: int = 0,
    points_per_side: int = 8,
    progress: ProgressFn | None = None,
) -> LayerSearch:
    """Score every captured block at every t on known warps of ``images`` and return the table and the best.

    images: each a float tensor [3, H, W] in [0, 1] (sizes may differ). ts: the t grid. warps: views per image.
    seed: the warps' generator (same seed, same warps, same table). progress(done, total) after each capture.
    """
    images = check_images(images)
    ts = check_ts(ts)
    if isinstance(warps, bool) or not isinstance(warps, int) or warps < 1:
        raise DiTFInputError(f"warps must be a positive integer (views per image), got {warps!r}")
    generator = torch.Generator("cpu").manual_seed(seed)
    views = [make_warps(image, warps, generator) for image in images]
    correct: dict[tuple[int, int], torch.Tensor] = {}  # (t index, layer) -> [A] correct matches
    counted = 0
    total, done = len(ts) * len(images), 0
    for image, known in zip(images, views):
        _, height, width = image.shape
        points = grid_points(width, height, points_per_side)
        truth = known.where(points)  # [N, K, 2]
        valid = inside(truth, width, height)  # [N, K]
        counted += int(valid.sum())
        batch = torch.cat([image[None], known.images])  # the image first, then its N views
        for row, t in enumerate(ts):
            for layer, features in extract(batch, t).items():
                check_cells(*features.grid)
                hits = score_block(features, points, truth, valid, max(width, height))
                correct[(row, layer)] = correct.get((row, layer), 0) + hits
            done += 1
            if progress is not None:
                progress(done, total)
    if counted == 0:
        raise DiTFInputError("every grid point left the image in every warp; use larger images")
    layers = sorted({layer for _, layer in correct})
    pck = torch.stack([torch.stack([correct[(row, layer)] for layer in layers]) for row in range(len(ts))])
    return LayerSearch(tuple(layers), tuple(ts), pck.permute(2, 0, 1).double() / counted, counted, len(images), warps)


def score_block(features: DiTFeatures, points: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor,
                size: int) -> torch.Tensor:
    """Correct matches [A] of one block: ``points`` [K, 2] of image 0 matched into images 1..N with ``fast``
    matching, compared with the known places ``truth`` [N, K, 2] where ``valid`` [N, K]."""
    views = features.batch - 1
    source = replace(features, features=features.features[:1].expand(views, -1, -1, -1))
    target = replace(features, features=features.features[1:])
    predicted = match_points(source, target, points, mode="fast").points  # [N, K, 2]
    distance = (predicted - truth).norm(dim=-1)
    return torch.stack([((distance <= alpha * size) & valid).sum() for alpha in ALPHAS])


def check_images(images) -> list[torch.Tensor]:
    """A non-empty list of float [3, H, W] images in [0, 1], each at least ``MIN_SIDE`` pixels a side."""
    if isinstance(images, torch.Tensor):
        images = list(images) if images.ndim == 4 else [images]
    images = list(images or [])
    if not images:
        raise DiTFInputError("the layer finder needs at least one image (its warps are the test set)")
    checked = []
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise DiTFInputError(f"image {index} must be a float tensor [3, H, W] in [0, 1], got {shape}")
        check_image_size(index, image.shape[2], image.shape[1])
        checked.append(image.to(torch.float32).clamp(0.0, 1.0))
    return checked


def check_ts(ts) -> list[float]:
    values = [check_timestep(t) for t in ts]
    if not values:
        raise DiTFInputError("give at least one t to try (e.g. 0.1, 0.26, 0.5)")
    return sorted(set(values))


def check_image_size(index: int, width: int, height: int) -> None:
    """Image ``index`` is large enough to place and score points on."""
    if min(width, height) < MIN_SIDE:
        raise DiTFInputError(
            f"image {index} is {width}x{height} px; the layer finder needs at least {MIN_SIDE} px a side to place and "
            "score points - use a larger image"
        )


def check_cells(height: int, width: int) -> None:
    """A feature grid of ``width x height`` cells is large enough to score matching on."""
    if min(height, width) < MIN_CELLS:
        raise DiTFInputError(
            f"the model gives this image only {width}x{height} feature cells; the layer finder needs at least "
            f"{MIN_CELLS} a side - use a larger image or a higher resolution"
        )
