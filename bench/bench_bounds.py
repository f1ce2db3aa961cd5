"""Benchmark: the cost of the values a shared workflow can carry into Correspondence Match (issue 10, section 3).

    PYTHONPATH=. python bench/bench_bounds.py [--points 4096] [--size 640] [--modes exact fast] [--root DIR]

Random Flux-width features (C = 3072, 16 px per cell, seeded), source and target images of ``--size`` px square.
Each (mode, point count) runs in a fresh subprocess; time is one run (after one warm-up run of 8 points), memory
the growth of the process's peak resident set size over its value right after the features were built
(``ru_maxrss``: what the machine had to provide, temporaries and allocator overheads included).

``--root`` imports ``ditf_core`` from another checkout (e.g. an export of the code before a change) so the same
script measures before and after. ``--mask`` also times spreading points inside a full mask of that many pixels
per side and dense matching with such masks (the mask-mode path of the node).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CHANNELS = 3072
STRIDE = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[4096])
    parser.add_argument("--size", type=int, default=640, help="image side in pixels (640: a 40 x 40 feature grid)")
    parser.add_argument("--modes", nargs="+", default=["exact", "fast"], choices=["exact", "fast"])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout to import from")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "POINTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, args.root)
        print(json.dumps(run_worker(args.worker[0], int(args.worker[1]), args.size)))
        return 0
    print(f"{args.size} px images, {args.size // STRIDE} x {args.size // STRIDE} x {CHANNELS} features, ditf_core "
          f"from {args.root}")
    for mode in args.modes:
        for count in args.points:
            command = [sys.executable, __file__, "--worker", mode, str(count), "--size", str(args.size),
                       "--root", args.root]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{mode:5s} {count:>7,d} points: failed\n{done.stderr[-2000:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode:5s} {count:>7,d} points: {result['seconds']:8.2f} s, peak +{result['peak_mb']:8.0f} MB, "
                  f"{1e3 * result['seconds'] / count:.3f} ms per point")
    return 0


def run_worker(mode: str, count: int, size: int) -> dict:
    import torch

    from ditf_core.features import DiTFeatures
    from ditf_core.mapping import PixelMapping
    from ditf_core.matching import match_points

    torch.set_grad_enabled(False)
    cells = size // STRIDE
    generator = torch.Generator().manual_seed(0)
    mapping = PixelMapping((size, size), (size, size), (cells, cells))
    source = DiTFeatures(torch.randn(1, CHANNELS, cells, cells, generator=generator), mapping)
    target = DiTFeatures(torch.randn(1, CHANNELS, cells, cells, generator=generator), mapping)
    points = torch.rand(count, 2, generator=generator) * (size - 1)
    extra = {"point_limit": None} if "point_limit" in match_points.__code__.co_varnames else {}
    match_points(source, target, points[:8], mode=mode, **extra)  # warm-up
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    match_points(source, target, points, mode=mode, **extra)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": (peak - base) / 1024}


if __name__ == "__main__":
    raise SystemExit(main())
