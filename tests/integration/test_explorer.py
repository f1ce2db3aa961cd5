"""The live explorer's server side without ComfyUI: the bounded feature cache (explorer_cache) and the route's
request handling (explorer_api: validation, answers, status codes, no filesystem). The HTTP route itself is
tested on a live server in test_frontend_points.py."""

from __future__ import annotations

import base64
import importlib
import json
import sys
import threading

import pytest
import torch

from test_offline import imported_modules

GRID, CELL, CHANNELS = 12, 16, 64  # a 192 x 192 px pair, 16 px per cell
SHIFT = (3, 2)  # target = source moved by (dx, dy) cells


@pytest.fixture(scope="module")
def mods(offline_pack):
    name = offline_pack.__name__
    return {
        key: importlib.import_module(f"{name}.{path}")
        for key, path in {
            "cache": "nodes.explorer_cache", "api": "nodes.explorer_api", "features": "ditf_core.features",
            "mapping": "ditf_core.mapping", "matching": "ditf_core.matching",
        }.items()
    }


@pytest.fixture(autouse=True)
def empty_cache(mods):
    mods["cache"].forget_all()
    mods["api"].forget_prepared()
    yield
    mods["cache"].forget_all()
    mods["api"].forget_prepared()


def features(mods, batch=1, seed=0, shift=(0, 0), grid=GRID, channels=CHANNELS):
    """Random features of a (grid * CELL)^2 px image; ``shift`` rolls them by (dx, dy) cells."""
    values = torch.randn(batch, channels, grid, grid, generator=torch.Generator().manual_seed(seed))
    values = torch.roll(values, shifts=(shift[1], shift[0]), dims=(2, 3))
    size = grid * CELL
    mapping = mods["mapping"].PixelMapping((size, size), (size, size), (grid, grid))
    return mods["features"].DiTFeatures(values, mapping)


def shifted_pair(mods, seed=0):
    return features(mods, seed=seed), features(mods, seed=seed, shift=SHIFT)


def request(mods, body) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return mods["api"].handle(raw)


def cell_centre(u, v):
    return (u + 0.5) * CELL - 0.5, (v + 0.5) * CELL - 0.5


# --- explorer_cache ----------------------------------------------------------------------------------------------
def test_remember_gives_opaque_ids_and_keeps_image_zero_on_the_cpu(mods):
    cache = mods["cache"]
    source, target = features(mods, batch=3), features(mods, batch=3, seed=1)
    keys = {cache.remember(source, target) for _ in range(3)}
    assert len(keys) == 3 and all(mods["api"].ID_PATTERN.fullmatch(key) for key in keys)
    pair = cache.lookup(keys.pop())
    assert pair.source.batch == pair.target.batch == 1
    assert torch.equal(pair.source.features[0], source.features[0])
    assert torch.equal(pair.target.features[0], target.features[0])
    assert pair.source.features.device.type == "cpu"
    assert cache.lookup("0" * 32) is None


def test_a_kept_pair_holds_one_image_not_the_whole_batch(mods):
    """The bound on memory is per pair: a view into the batch would keep every image of it alive."""
    cache = mods["cache"]
    source, target = features(mods, batch=4), features(mods, batch=4, seed=1)
    pair = cache.lookup(cache.remember(source, target))
    one_image = GRID * GRID * CHANNELS * 4
    assert pair.source.features.untyped_storage().nbytes() == one_image
    assert pair.target.features.untyped_storage().nbytes() == one_image


def test_cache_is_bounded_and_evicts_the_least_recently_used(mods):
    cache = mods["cache"]
    source, target = shifted_pair(mods)
    keys = [cache.remember(source, target) for _ in range(cache.MAX_PAIRS)]
    assert cache.lookup(keys[0]) is not None  # now the most recently used
    newer = [cache.remember(source, target) for _ in range(2)]
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[2]) is None  # the two oldest untouched ones
    assert all(cache.lookup(key) is not None for key in [keys[0], *keys[3:], *newer])


def test_cache_stays_bounded_under_concurrent_writers(mods):
    cache = mods["cache"]
    source, target = shifted_pair(mods)
    keys = []
    threads = [threading.Thread(target=lambda: keys.extend(cache.remember(source, target) for _ in range(10)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 40
    assert sum(cache.lookup(key) is not None for key in keys) == cache.MAX_PAIRS


# --- explorer_api: answers ---------------------------------------------------------------------------------------
def test_answer_finds_the_known_shift_and_encodes_the_heatmap(mods):
    key = mods["cache"].remember(*shifted_pair(mods))
    x, y = cell_centre(4, 5)
    status, answer = request(mods, {"explorer": key, "x": x, "y": y})
    assert status == 200, answer
    assert (answer["width"], answer["height"], answer["target_size"]) == (GRID, GRID, [GRID * CELL] * 2)
    assert answer["best"] == pytest.approx(cell_centre(4 + SHIFT[0], 5 + SHIFT[1]), abs=0.01)
    assert answer["cell"] == pytest.approx([4 + SHIFT[0], 5 + SHIFT[1]], abs=1e-3)
    assert answer["score"] == pytest.approx(1.0, abs=1e-4) and answer["range"][1] == pytest.approx(1.0, abs=1e-4)
    assert answer["source"] == [x, y] and answer["encoding"] == "uint8-base64"
    heat = torch.frombuffer(bytearray(base64.b64decode(answer["heat"])), dtype=torch.uint8).reshape(GRID, GRID)
    assert int(heat.max()) == 255 and int(heat.min()) == 0
    assert int(heat[5 + SHIFT[1], 4 + SHIFT[0]]) == 255 and int((heat == 255).sum()) == 1


def test_answer_agrees_with_match_points_fast_between_cells(mods):
    source, target = features(mods, seed=3), features(mods, seed=4)  # unrelated maps: soft-argmax matters
    key = mods["cache"].remember(source, target)
    for xy in [(10.0, 20.0), (100.3, 57.9), (191.5, 0.0)]:
        status, answer = request(mods, {"explorer": key, "x": xy[0], "y": xy[1]})
        reference = mods["matching"].match_points(source, target, [list(xy)], mode="fast")
        assert status == 200
        assert answer["best"] == pytest.approx(reference.points[0, 0].tolist(), abs=0.01)
        assert answer["score"] == pytest.approx(float(reference.scores[0, 0]), abs=1e-5)


def test_integers_and_the_outer_half_pixel_are_accepted(mods):
    key = mods["cache"].remember(*shifted_pair(mods))
    last = GRID * CELL - 0.5
    for x, y in [(0, 0), (-0.5, -0.5), (last, last), (191, 3)]:
        assert request(mods, {"explorer": key, "x": x, "y": y})[0] == 200


def test_prepared_pairs_are_bounded_and_follow_the_cache(mods):
    cache, api = mods["cache"], mods["api"]
    keys = [cache.remember(*shifted_pair(mods, seed=i)) for i in range(3)]
    for key in keys:
        assert request(mods, {"explorer": key, "x": 5, "y": 5})[0] == 200
    assert list(api._prepared) == keys[-api.PREPARED_PAIRS:]
    cache.forget_all()
    assert request(mods, {"explorer": keys[-1], "x": 5, "y": 5})[0] == 404
    assert keys[-1] not in api._prepared  # an expired id also lets go of its prepared copy


# --- explorer_api: refusals --------------------------------------------------------------------------------------
KEY = "ab" * 16


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "empty request body"),
    (b"   ", 400, "empty request body"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b"{", 400, "not valid JSON"),
    (b'{"explorer": "x", "x": 1, "y": 2}}', 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'"text"', 400, "must be a JSON object"),
    (f'{{"explorer": "{KEY}", "x": NaN, "y": 1}}'.encode(), 400, "NaN is not a number"),
    (f'{{"explorer": "{KEY}", "x": 1, "y": Infinity}}'.encode(), 400, "Infinity is not a number"),
    (f'{{"explorer": "{KEY}", "x": -Infinity, "y": 1}}'.encode(), 400, "-Infinity is not a number"),
    (f'{{"explorer": "{KEY}", "x": 1e999, "y": 1}}'.encode(), 400, "x must be a finite number"),
    (f'{{"explorer": "{KEY}", "x": {"9" * 400}, "y": 1}}'.encode(), 400, "x must be a finite number"),
    ({"explorer": KEY, "x": 1}, 400, "missing y"),
    ({"x": 1, "y": 1}, 400, "missing explorer"),
    ({"explorer": KEY, "x": 1, "y": 1, "z": 0}, 400, "unknown 'z'"),
    ({"explorer": KEY, "x": True, "y": 1}, 400, "x must be a number"),
    ({"explorer": KEY, "x": "12", "y": 1}, 400, "x must be a number"),
    ({"explorer": KEY, "x": 1, "y": None}, 400, "y must be a number"),
    ({"explorer": KEY, "x": [1], "y": 1}, 400, "x must be a number"),
    ({"explorer": KEY.upper(), "x": 1, "y": 1}, 400, "32-character hex id"),
    ({"explorer": KEY[:-1], "x": 1, "y": 1}, 400, "32-character hex id"),
    ({"explorer": 12, "x": 1, "y": 1}, 400, "32-character hex id"),
    ({"explorer": "../" * 10 + "ab", "x": 1, "y": 1}, 400, "32-character hex id"),
    (b"{" + b" " * 1100 + b"}", 413, "limit is 1024"),
])
def test_malformed_requests_get_4xx_with_a_message(mods, body, status, message):
    got, answer = request(mods, body)
    assert got == status, answer
    assert set(answer) == {"error"} and message in answer["error"], answer


def test_unknown_and_evicted_ids_get_404(mods):
    cache = mods["cache"]
    status, answer = request(mods, {"explorer": KEY, "x": 1, "y": 1})
    assert status == 404 and "queue the workflow again" in answer["error"]
    first = cache.remember(*shifted_pair(mods))
    for _ in range(cache.MAX_PAIRS):
        cache.remember(*shifted_pair(mods))
    assert request(mods, {"explorer": first, "x": 1, "y": 1})[0] == 404


@pytest.mark.parametrize("x, y", [(-0.51, 5), (5, -1), (GRID * CELL - 0.49, 5), (5, 1e9)])
def test_points_outside_the_source_image_get_400(mods, x, y):
    key = mods["cache"].remember(*shifted_pair(mods))
    status, answer = request(mods, {"explorer": key, "x": x, "y": y})
    assert status == 400 and f"outside the {GRID * CELL}x{GRID * CELL} source image" in answer["error"]


# --- explorer_api: no filesystem, no ComfyUI ----------------------------------------------------------------------
_watch = {"on": False, "events": []}


def _audit(event, args):
    if _watch["on"] and event.startswith(("open", "os.", "shutil.", "glob.", "pathlib.", "tempfile.")):
        _watch["events"].append((event, args[:1]))


def test_answering_never_touches_the_filesystem(mods):
    sys.addaudithook(_audit)  # hooks cannot be removed; it only records while the flag is on
    key = mods["cache"].remember(*shifted_pair(mods))
    request(mods, {"explorer": key, "x": 3, "y": 4})  # warm-up: lazy imports inside torch may read files once
    _watch.update(on=True, events=[])
    try:
        answers = [request(mods, body)[0] for body in (
            {"explorer": key, "x": 30, "y": 40}, {"explorer": KEY, "x": 1, "y": 1}, b"{", b"x" * 5000,
            {"explorer": "/etc/passwd", "x": 1, "y": 1},
        )]
        mods["api"].forget_prepared()
        answers.append(request(mods, {"explorer": key, "x": 7, "y": 9})[0])  # preparing a pair too
    finally:
        _watch["on"] = False
    assert answers == [200, 404, 400, 413, 400, 200]
    assert _watch["events"] == []


def test_request_handling_is_host_agnostic():
    from test_offline import NODES

    for name in ("explorer_api.py", "explorer_cache.py"):
        roots = {module.split(".")[0] for module in imported_modules(NODES / name)}
        assert not roots & {"comfy", "comfy_api", "folder_paths", "server", "aiohttp"}, name
    assert {"server", "aiohttp"} <= {m.split(".")[0] for m in imported_modules(NODES / "routes.py")}
