"""The live explorer's HTTP route on a live ComfyUI server: registered under the pack's prefix (and /api), answers from
a pair a run put in the cache, refuses malformed and oversized requests with 4xx and a JSON message and no
exception in the server log, and answers a full-width 40 x 40 x 3072 pair well under 100 ms."""

from __future__ import annotations

import base64
import http.client
import json
import statistics
import time

import pytest

from live_server import succeeded

pytestmark = pytest.mark.comfyui

PATH = "/ditf/explorer/similarity"
GRID, CELL, SHIFT = 40, 16, (5, 3)  # DiTFTestExplorerPair: target = source rolled by (dx, dy) cells


@pytest.fixture(scope="module")
def pair(server):
    """The id of a synthetic 640 x 640 px, 40 x 40 x 3072 pair the test node put in the pack's explorer cache."""
    entry = server.run({"pair": {"class_type": "DiTFTestExplorerPair", "inputs": {
        "grid": GRID, "channels": 3072, "cell": CELL, "dx": SHIFT[0], "dy": SHIFT[1], "seed": 0}}})
    assert succeeded(entry), entry["status"]
    return entry["outputs"]["pair"]["ditf_explorer"][0]


def raw_post(server, body: bytes, path: str = PATH, headers: dict | None = None, chunked: bool = False):
    """POST exact bytes (http.client: no JSON encoding in the way) -> (status, parsed JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", path, body=iter([body]) if chunked else body,
                           headers={"Content-Type": "application/json", **(headers or {})},
                           encode_chunked=chunked)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def cell_centre(u, v):
    return (u + 0.5) * CELL - 0.5, (v + 0.5) * CELL - 0.5


def test_route_answers_with_the_known_match(server, pair):
    x, y = cell_centre(10, 20)
    for path in (PATH, "/api" + PATH):  # the frontend's api.fetchApi uses the /api prefix
        status, answer = server.post(path, {"explorer": pair, "x": x, "y": y})
        assert status == 200, answer
        assert (answer["width"], answer["height"], answer["target_size"]) == (GRID, GRID, [GRID * CELL] * 2)
        assert answer["best"] == pytest.approx(cell_centre(10 + SHIFT[0], 20 + SHIFT[1]), abs=0.01)
        assert answer["score"] == pytest.approx(1.0, abs=1e-4)
        heat = base64.b64decode(answer["heat"])
        assert len(heat) == GRID * GRID and heat[(20 + SHIFT[1]) * GRID + 10 + SHIFT[0]] == 255


KEY = "ab" * 16
MALFORMED = [
    (b"", 400, "empty request body"),
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"[]", 400, "must be a JSON object"),
    (f'{{"explorer": "{KEY}", "x": NaN, "y": 1}}'.encode(), 400, "NaN"),
    (f'{{"explorer": "{KEY}", "x": 1, "y": Infinity}}'.encode(), 400, "Infinity"),
    (f'{{"explorer": "{KEY}", "x": 1e999, "y": 1}}'.encode(), 400, "finite"),
    (f'{{"explorer": "{KEY}", "x": "1", "y": 1}}'.encode(), 400, "x must be a number"),
    (f'{{"explorer": "{KEY}", "x": 1}}'.encode(), 400, "missing y"),
    (f'{{"explorer": "{KEY}", "x": 1, "y": 1, "path": "/etc"}}'.encode(), 400, "unknown 'path'"),
    (b'{"explorer": "../../etc/passwd", "x": 1, "y": 1}', 400, "32-character hex id"),
    (f'{{"explorer": "{KEY}", "x": 1, "y": 1}}'.encode(), 404, "unknown or expired explorer id"),
    (b"{" + b" " * 5000 + b"}", 413, "limit is 1024"),
    (b"x" * (2 << 20), 413, "limit is 1024"),
]


def test_malformed_and_oversized_requests_get_4xx_and_leave_no_traceback(server, pair):
    log_before = len(server.log())
    for body, status, message in MALFORMED:
        got, answer = raw_post(server, body)
        assert (got, message in answer.get("error", "")) == (status, True), (body[:80], got, answer)
    got, answer = raw_post(server, b'{"explorer": "' + pair.encode() + b'", "x": 1, "y": 1' + b" " * 2000 + b"}",
                           chunked=True)  # no Content-Length: the cap applies while reading
    assert got == 413, answer
    for x, y in [(-0.51, 1), (1, GRID * CELL - 0.49), (1e12, 0)]:
        got, answer = server.post(PATH, {"explorer": pair, "x": x, "y": y})
        assert got == 400 and "outside the 640x640 source image" in answer["error"], answer
    assert raw_post(server, b"", path=PATH, headers={"Content-Length": "999999999"})[0] in (400, 413)
    new_log = server.log()[log_before:]
    assert "Traceback" not in new_log and "Error handling request" not in new_log, new_log[-3000:]
    status, answer = server.post(PATH, {"explorer": pair, "x": 3, "y": 4})
    assert status == 200  # and the route still works


def test_route_latency_for_a_40x40x3072_pair(server, pair):
    import random

    generator = random.Random(0)
    fresh = server.run({"pair": {"class_type": "DiTFTestExplorerPair", "inputs": {
        "grid": GRID, "channels": 3072, "cell": CELL, "dx": SHIFT[0], "dy": SHIFT[1], "seed": 1}}})
    key = fresh["outputs"]["pair"]["ditf_explorer"][0]
    started = time.perf_counter()
    assert server.post(PATH, {"explorer": key, "x": 1, "y": 1})[0] == 200  # the first query prepares the pair
    first = (time.perf_counter() - started) * 1000
    times = []
    for _ in range(60):
        body = {"explorer": key, "x": generator.uniform(0, 639), "y": generator.uniform(0, 639)}
        started = time.perf_counter()
        status, _ = server.post(PATH, body)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200
    median, p90 = statistics.median(times), statistics.quantiles(times, n=10)[-1]
    print(f"explorer route, 40x40x3072 pair over HTTP: median {median:.1f} ms, p90 {p90:.1f} ms (60 queries); "
          f"first query of the pair (prepares it) {first:.1f} ms")
    assert median < 100 and first < 1000
