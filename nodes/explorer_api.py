"""The live correspondence explorer's request handling, without the web server (``routes.py`` is the thin HTTP glue).

``POST /ditf/explorer/similarity`` with ``{"explorer": "<id>", "x": 120, "y": 80}`` (ORIGINAL source pixels, the
id a Correspondence Match run sent to the UI) answers, from the features that run left in
:mod:`.explorer_cache`, the cosine similarity of that source point with every target feature cell, and its best
match (the same answer as match mode "fast"):

    {"explorer": id, "width": w, "height": h,           # target feature grid
     "heat": "<base64>", "encoding": "uint8-base64",   # w*h bytes, row-major: round(255 * heat), heat in [0, 1]
     "range": [min, max],                              # cosines that heat 0 and 1 stand for
     "best": [x, y], "cell": [u, v], "score": s,       # best match: target pixels, feature cell, cosine
     "source": [x, y], "target_size": [W, H]}

Errors are JSON ``{"error": message}``: 400 for a malformed body, field or point, 404 for an unknown or evicted id,
413 for a body over :data:`MAX_BODY_BYTES`. Nothing here touches the filesystem. No ComfyUI or aiohttp import
(tested without them).
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from collections import OrderedDict

import torch

from ..ditf_core.errors import DiTFInputError
from ..ditf_core.matching.explore import PairExplorer
from . import explorer_cache

PATH = "/ditf/explorer/similarity"
MAX_BODY_BYTES = 1024  # a request is ~80 bytes; anything near this is not from our frontend
FIELDS = ("explorer", "x", "y")
ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # explorer_cache.remember: secrets.token_hex(16)
ENCODING = "uint8-base64"
# Pairs prepared for queries (checked once, unit target vectors: a copy of the target map each). A user explores
# one pair at a time; two cover switching between two Match nodes. They may outlive their cache entry until pushed
# out, so memory stays bounded by explorer_cache.MAX_PAIRS + PREPARED_PAIRS pairs.
PREPARED_PAIRS = 2

_prepared: OrderedDict[str, tuple[explorer_cache.ExplorerPair, PairExplorer]] = OrderedDict()
_lock = threading.Lock()  # requests are answered on worker threads


class ExplorerError(Exception):
    """A request the explorer refuses: HTTP ``status`` and a message that says what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def handle(body: bytes) -> tuple[int, dict]:
    """Answer one request body -> (HTTP status, JSON-able payload). Bad input never raises."""
    try:
        key, x, y = parse_request(body)
        return 200, answer(key, x, y)
    except ExplorerError as error:
        return error.status, {"error": error.message}


def parse_request(body: bytes) -> tuple[str, float, float]:
    """Validate a request body -> (explorer id, x, y). Raises :class:`ExplorerError` (400 / 413)."""
    if len(body) > MAX_BODY_BYTES:
        raise ExplorerError(413, f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    if not body.strip():
        raise ExplorerError(400, 'empty request body; send JSON {"explorer": "<id>", "x": <number>, "y": <number>}')
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ExplorerError(400, "request body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ExplorerError(400, f"request body is not valid JSON ({error.msg} at position {error.pos})") from None
    except ValueError as error:  # NaN / Infinity literals
        raise ExplorerError(400, str(error)) from None
    if not isinstance(data, dict):
        raise ExplorerError(400, f'request must be a JSON object {{"explorer", "x", "y"}}, got {type(data).__name__}')
    missing = [name for name in FIELDS if name not in data]
    unknown = sorted(set(data) - set(FIELDS))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(map(repr, unknown))}"] if unknown else []
        )
        raise ExplorerError(400, f"request fields must be exactly explorer, x, y ({'; '.join(parts)})")
    key = data["explorer"]
    if not isinstance(key, str) or not ID_PATTERN.fullmatch(key):
        raise ExplorerError(400, "explorer must be the 32-character hex id a Correspondence Match run sent to the UI")
    return key, _coordinate("x", data["x"]), _coordinate("y", data["y"])


def answer(key: str, x: float, y: float) -> dict:
    """The similarity map of source pixel (x, y) in the pair kept under ``key``. Raises :class:`ExplorerError`."""
    pair = explorer_cache.lookup(key)
    if pair is None:
        with _lock:
            _prepared.pop(key, None)
        raise ExplorerError(
            404, "unknown or expired explorer id: the features of that run are no longer in memory (the last "
            f"{explorer_cache.MAX_PAIRS} matched pairs are kept); change an input and queue the workflow again (an "
            "unchanged graph replays the cached result)"
        )
    width, height = pair.source.mapping.image_size
    if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
        raise ExplorerError(
            400, f"point ({x:g}, {y:g}) lies outside the {width}x{height} source image (0 <= x < {width}, "
            f"0 <= y < {height}; pixel centres at integers)"
        )
    try:
        found = _prepare(key, pair)((x, y))
    except DiTFInputError as error:
        raise ExplorerError(400, str(error)) from None
    h, w = found.similarity.shape
    heat = (found.heat() * 255.0).round().to(torch.uint8)
    return {
        "explorer": key,
        "width": w,
        "height": h,
        "heat": base64.b64encode(heat.numpy().tobytes()).decode("ascii"),
        "encoding": ENCODING,
        "range": [round(float(found.similarity.min()), 5), round(float(found.similarity.max()), 5)],
        "best": [round(found.best[0], 2), round(found.best[1], 2)],
        "cell": [round(found.cell[0], 3), round(found.cell[1], 3)],
        "score": round(found.score, 5),
        "source": [x, y],
        "target_size": list(pair.target.mapping.image_size),
    }


def _prepare(key: str, pair: explorer_cache.ExplorerPair) -> PairExplorer:
    """The prepared explorer of the pair kept under ``key`` (re-prepared if the cache now holds another pair)."""
    with _lock:
        kept = _prepared.get(key)
        if kept is not None and kept[0] is pair:
            _prepared.move_to_end(key)
            return kept[1]
    explorer = PairExplorer(pair.source, pair.target)  # outside the lock: ~20-50 ms for 40 x 40 x 3072
    with _lock:
        _prepared[key] = (pair, explorer)
        _prepared.move_to_end(key)
        while len(_prepared) > PREPARED_PAIRS:
            _prepared.popitem(last=False)
    return explorer


def forget_prepared() -> None:
    with _lock:
        _prepared.clear()


def _coordinate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExplorerError(400, f"{name} must be a number (source image pixels), got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ExplorerError(400, f"{name} must be a finite number (source image pixels), got {value!r}")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number the explorer accepts; send finite x and y in source image pixels")
