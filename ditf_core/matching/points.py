"""Keypoints as users give them: KJNodes PointsEditor JSON, lists of pairs, or tensors.

KJNodes' PointsEditor emits a JSON string holding a list of ``{"x": .., "y": ..}`` objects, e.g.
``[{"x":120,"y":80},{"x":200,"y":150}]``; :func:`parse_points` also takes a list of ``[x, y]`` pairs (as JSON or
as a Python list). All coordinates are ORIGINAL image pixels, the centre of pixel column i at x = i.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import DiTFInputError

# The most points one match takes (per image pair). People click tens of points and a mask spreads at most 256;
# 1024 (a 32 x 32 grid) leaves room for points made by other nodes, and past that the dense matches (every feature
# cell, both ways, computed anyway) are the better tool. It bounds the time a shared workflow's points can cost:
# "exact" compares every point with every target pixel, ~20 ms a point for a 640 px target on a busy 2-core CPU
# (bench/bench_bounds.py), so ~20 s for 1024 points ("fast": ~0.5 s), stoppable between chunks; memory stays
# bounded by the search's chunks whatever the count.
MAX_POINTS = 1024
# Text longer than this cannot hold MAX_POINTS points in any sensible layout (pretty-printed KJNodes JSON takes
# ~50 characters a point): refused before parsing, so a huge text costs no parse.
MAX_CHARACTERS_PER_POINT = 128


def parse_points(text, *, limit: int | None = MAX_POINTS) -> torch.Tensor:
    """Points from KJNodes-style JSON (or an already parsed list) -> float32 [K, 2] (x, y).

    Accepts ``'[{"x": 1, "y": 2}, ...]'``, ``'[[1, 2], ...]'``, the same structures as Python lists, a numpy
    array or a tensor [K, 2]. An empty list gives an empty [0, 2] tensor; matching rejects it later.
    limit: the most points accepted (None: any number); longer text is refused before it is parsed.
    """
    if isinstance(text, torch.Tensor) or isinstance(text, np.ndarray):
        points = torch.as_tensor(text, dtype=torch.float32)
        if points.ndim != 2 or points.shape[-1] != 2:
            raise DiTFInputError(f"points must be [K, 2] (x, y), got shape {list(points.shape)}")
        check_point_count(points.shape[0], limit)
        return _finite(points, "points")
    if isinstance(text, (str, bytes)):
        if limit is not None and len(text) > limit * MAX_CHARACTERS_PER_POINT:
            raise DiTFInputError(
                f"points text is {len(text):,} characters long, too long for the {limit:,} points one match takes; "
                f"{_SPLIT_ADVICE}"
            )
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as error:
            raise DiTFInputError(
                f"points are not valid JSON ({error.msg} at position {error.pos}); expected e.g. "
                '\'[{"x": 120, "y": 80}]\' as written by the KJNodes PointsEditor'
            ) from None
    else:
        data = text
    if isinstance(data, dict):
        data = [data]  # a single point object
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        kind = type(data).__name__
        raise TypeError(f"points must be a JSON list of {{'x', 'y'}} objects or [x, y] pairs, got {kind}")
    check_point_count(len(data), limit)
    rows = [_point(entry, i) for i, entry in enumerate(data)]
    points = torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)
    return _finite(points, "points")


def format_points(points: torch.Tensor, decimals: int = 2) -> str:
    """[K, 2] (x, y) -> KJNodes PointsEditor JSON ``[{"x": .., "y": ..}, ...]``; integral values stay integers."""
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[-1] != 2:
        shape = list(points.shape)
        raise DiTFInputError(f"format_points takes [K, 2] (x, y) points, got shape {shape}; select one image")
    return json.dumps([{"x": _number(x, decimals), "y": _number(y, decimals)} for x, y in points.tolist()])


def check_point_count(count: int, limit: int | None, name: str = "points") -> None:
    """Refuse more than ``limit`` points (None: no limit), saying how to split the work."""
    if limit is not None and count > limit:
        raise DiTFInputError(f"{name} holds {count:,} points, more than the {limit:,} one match takes; {_SPLIT_ADVICE}")


def check_points(
    points, image_size: tuple[int, int], batch: int, name: str = "points", *, limit: int | None = MAX_POINTS
) -> torch.Tensor:
    """Validate points against an image of ``image_size`` (W, H) -> float32 [batch, K, 2].

    points: [K, 2] (used for every image of the batch), [batch, K, 2], or anything :func:`parse_points` reads.
    A point is inside the image when -0.5 <= x <= W - 0.5 and -0.5 <= y <= H - 0.5 (the pixel areas).
    limit: the most points per image (None: any number).
    """
    if not isinstance(points, torch.Tensor):
        points = parse_points(points, limit=limit)
    if points.ndim == 2:
        points = points.unsqueeze(0).expand(batch, -1, -1)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise DiTFInputError(f"{name} must be [K, 2] or [B, K, 2] (x, y) pixels, got shape {list(points.shape)}")
    if points.shape[0] != batch:
        raise DiTFInputError(
            f"{name} has {points.shape[0]} point sets but the features hold {batch} images; pass [K, 2] to use "
            "the same points for every image, or one set per image"
        )
    if points.shape[1] == 0:
        raise DiTFInputError(f"{name} is empty: give at least one (x, y) point to match")
    check_point_count(points.shape[1], limit, name)
    points = _finite(points.to(torch.float32), name)
    width, height = image_size
    outside = (points[..., 0] < -0.5) | (points[..., 0] > width - 0.5)
    outside |= (points[..., 1] < -0.5) | (points[..., 1] > height - 0.5)
    if outside.any():
        b, k = (int(i) for i in outside.nonzero()[0])
        x, y = points[b, k].tolist()
        raise DiTFInputError(
            f"{name}[{k}] = ({x:g}, {y:g}) lies outside the {width}x{height} source image; points are ORIGINAL "
            f"image pixels with 0 <= x < {width} and 0 <= y < {height}"
        )
    return points


_SPLIT_ADVICE = (
    "split them into several matches of at most that many (several Correspondence Match nodes on the same features, "
    "or several match_points calls), or use the dense matches, which cover every feature cell"
)


def _point(entry, index: int) -> tuple[float, float]:
    if isinstance(entry, dict):
        if "x" not in entry or "y" not in entry:
            raise DiTFInputError(f"point {index} ({entry!r}) needs both 'x' and 'y' keys")
        values = (entry["x"], entry["y"])
    elif isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)) and len(entry) == 2:
        values = tuple(entry)
    else:
        raise DiTFInputError(f"point {index} ({entry!r}) must be {{'x': .., 'y': ..}} or an [x, y] pair")
    try:
        x, y = (float(v) for v in values)
    except (TypeError, ValueError):
        raise DiTFInputError(f"point {index} ({entry!r}) has non-numeric coordinates") from None
    return x, y


def _finite(points: torch.Tensor, name: str) -> torch.Tensor:
    bad = ~torch.isfinite(points)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise DiTFInputError(f"{name} contains NaN or infinite coordinates (first at index {index[:-1]}); remove them")
    return points


def _number(value: float, decimals: int):
    value = round(float(value), decimals)
    return int(value) if math.isfinite(value) and value.is_integer() else value
