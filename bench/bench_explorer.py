"""Benchmark: the live explorer's answer time per query (target: < 100 ms for a 40 x 40 map on a CPU).

    PYTHONPATH=. python bench/bench_explorer.py [--queries 200] [--channels 3072]

Random features (seeded), C = 3072 channels, source and target of the same size: 40 x 40 cells (a 640 px Flux
image) and 64 x 64 (1024 px). Reported per size, after one warm-up query:

* prepare: the first query of a pair (checks + unit target vectors, once per pair; ``PairExplorer``);
* query: ``PairExplorer(xy)``, the similarity map and the refined best match of one source point;
* request: the route's whole request handling (``nodes.explorer_api.handle``: JSON parsing and validation, cache
  lookup, the query, heat encoding) on a random point. Only the HTTP transport is missing (measured on a live
  server by tests/integration/test_frontend_points.py).

Median and 90th percentile over --queries random points.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = {640: 40, 1024: 64}
CELL = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--channels", type=int, default=3072)
    args = parser.parse_args()
    pack = load_pack()
    api, cache = pack["nodes.explorer_api"], pack["nodes.explorer_cache"]
    features, mapping = pack["ditf_core.features"], pack["ditf_core.mapping"]
    explore = pack["ditf_core.matching.explore"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, C = {args.channels}, "
          f"{args.queries} queries per size")
    generator = torch.Generator().manual_seed(0)
    for pixels, grid in SIZES.items():
        shape = (1, args.channels, grid, grid)
        pixel_map = mapping.PixelMapping((pixels, pixels), (pixels, pixels), (grid, grid))
        source = features.DiTFeatures(torch.randn(shape, generator=generator), pixel_map)
        target = features.DiTFeatures(torch.randn(shape, generator=generator), pixel_map)
        points = (torch.rand(args.queries, 2, generator=generator) * (pixels - 1)).tolist()

        started = time.perf_counter()
        explorer = explore.PairExplorer(source, target)
        prepare = (time.perf_counter() - started) * 1000
        explorer(points[0])
        query = timed(lambda xy: explorer(xy), points)

        key = cache.remember(source, target)
        bodies = [json.dumps({"explorer": key, "x": x, "y": y}).encode() for x, y in points]
        assert api.handle(bodies[0])[0] == 200
        request = timed(lambda body: api.handle(body), bodies)
        print(f"{grid} x {grid} cells ({pixels} px): prepare {prepare:.1f} ms once per pair; "
              f"query median {query[0]:.2f} ms (p90 {query[1]:.2f}); "
              f"request median {request[0]:.2f} ms (p90 {request[1]:.2f})")
    return 0


def timed(function, inputs) -> tuple[float, float]:
    times = []
    for value in inputs:
        started = time.perf_counter()
        function(value)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


def load_pack() -> dict:
    """The pack's host-agnostic modules under an alias (its ``__init__`` needs ComfyUI; ``nodes`` is ComfyUI's name)."""
    alias = "ditf_pack_bench"
    for name, path in ((alias, ROOT), (f"{alias}.nodes", ROOT / "nodes")):
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        sys.modules[name] = importlib.util.module_from_spec(spec)  # registered, not executed
    names = ("nodes.explorer_api", "nodes.explorer_cache", "ditf_core.features", "ditf_core.mapping",
             "ditf_core.matching.explore")
    return {name: importlib.import_module(f"{alias}.{name}") for name in names}


if __name__ == "__main__":
    sys.exit(main())
