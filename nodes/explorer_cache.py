"""Features kept in memory for the live correspondence explorer (the frontend asks for similarity maps of the
last matched pair without re-running the graph).

The Correspondence Match node calls :func:`remember` with the pair it matched and sends the returned opaque id to
the UI; the server route looks pairs up by id. Bounded: the least recently used pairs are evicted, and nothing
touches the filesystem. No ComfyUI import (tested without it).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from ..ditf_core.features import DiTFeatures

MAX_PAIRS = 8  # a 1024 px Flux pair is 2 x 64 x 64 x 3072 float32 = 200 MB: keep the cache small


@dataclass(frozen=True)
class ExplorerPair:
    """One matched pair: source and target features (one image each, on the CPU)."""

    source: DiTFeatures
    target: DiTFeatures


_pairs: OrderedDict[str, ExplorerPair] = OrderedDict()
_lock = threading.Lock()  # node execution and server routes run on different threads


def remember(source: DiTFeatures, target: DiTFeatures) -> str:
    """Keep a pair (image 0 of each) for the explorer; returns its opaque id (hex, unguessable)."""
    pair = ExplorerPair(_own_copy(source), _own_copy(target))
    key = secrets.token_hex(16)
    with _lock:
        _pairs[key] = pair
        while len(_pairs) > MAX_PAIRS:
            _pairs.popitem(last=False)
    return key


def lookup(key: str) -> ExplorerPair | None:
    """The pair kept under ``key``, or None (unknown or evicted)."""
    with _lock:
        pair = _pairs.get(key)
        if pair is not None:
            _pairs.move_to_end(key)
        return pair


def forget_all() -> None:
    with _lock:
        _pairs.clear()


def _own_copy(features: DiTFeatures) -> DiTFeatures:
    """Image 0 in storage of its own on the CPU: a view (``select``) would keep the whole batch alive."""
    one = features.select(0)
    return replace(one, features=one.features.detach().to("cpu", copy=True))
