"""Benchmark: the cost of the values a shared workflow can carry, after their bounds (issue 10, section 3).

    PYTHONPATH=. python bench/bench_bounds.py [--points 1024] [--size 640] [--modes exact fast] [--root DIR]
                                              [--before DIR]

First the bounds that refuse before any work (100,000 points, a Flux resolution of 4096) and the models/diffusers
listing on a folder with link loops, timed in a fresh subprocess. Then Correspondence Match: random Flux-width
features (C = 3072, 16 px per cell, seeded), source and target images of ``--size`` px square.
Each (mode, point count) runs in a fresh subprocess; time is one run (after one warm-up run of 8 points), memory
the growth of the process's peak resident set size over its value right after the features were built
(``ru_maxrss``: what the machine had to provide, temporaries and allocator overheads included).

glibc keeps freed blocks of the chunks' varying sizes instead of returning them, so on a long run the peak RSS creeps
up with the number of chunks; run with ``MALLOC_MMAP_THRESHOLD_=65536`` (large blocks returned when freed) to see
the memory the search itself holds (measured: flat at ~27 MB for 1024 and 4096 points, where the code before the
chunking held 315 MB and 1329 MB).

``--root`` imports ``ditf_core`` from another checkout; ``--before DIR`` also runs every case from DIR (e.g. an
export of the code before a change: ``git archive <commit> | tar -x -C DIR``) and prints this checkout's time and
memory as ratios of it.
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
    parser.add_argument("--points", type=int, nargs="+", default=[1024])
    parser.add_argument("--size", type=int, default=640, help="image side in pixels (640: a 40 x 40 feature grid)")
    parser.add_argument("--modes", nargs="+", default=["exact", "fast"], choices=["exact", "fast"])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="checkout to import from")
    parser.add_argument("--before", help="also run from this checkout and print ratios to it")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "POINTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, args.root)
        print(json.dumps(run_worker(args.worker[0], int(args.worker[1]), args.size)))
        return 0
    refusals = spawn("refusals", 0, args.size, args.root)
    print("refused before any work (median of 5):")
    for name, seconds in refusals.items():
        print(f"  {name}: {1e6 * seconds:,.1f} µs")
    print(f"{args.size} px images, {args.size // STRIDE} x {args.size // STRIDE} x {CHANNELS} features, ditf_core "
          f"from {args.root}" + (f" (before: {args.before})" if args.before else ""))
    for mode in args.modes:
        for count in args.points:
            roots = {"before": args.before, "now": args.root} if args.before else {"now": args.root}
            results = {name: spawn(mode, count, args.size, root) for name, root in roots.items()}
            for name, result in results.items():
                print(f"{name:6s} {mode:5s} {count:>7,d} points: {result['seconds']:8.2f} s, peak "
                      f"+{result['peak_mb']:6.0f} MB, {1e3 * result['seconds'] / count:.3f} ms per point")
            if args.before:
                before, now = results["before"], results["now"]
                print(f"       now / before: time {now['seconds'] / before['seconds']:.2f}x, peak memory "
                      f"{max(now['peak_mb'], 1) / max(before['peak_mb'], 1):.2f}x")
    return 0


def spawn(mode: str, count: int, size: int, root: str) -> dict:
    command = [sys.executable, __file__, "--worker", mode, str(count), "--size", str(size), "--root", root]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} with {count} points from {root} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(mode: str, count: int, size: int) -> dict:
    if mode == "refusals":
        return time_refusals()
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


def time_refusals() -> dict:
    """Seconds each bound takes to refuse (or, for the folder walk, to finish) what a shared workflow can carry."""
    import os
    import tempfile

    import torch
    from timing import median_seconds

    from ditf_core.demo_model import build_tiny_flux
    from ditf_core.errors import DiTFInputError
    from ditf_core.families.flux import FluxFamily
    from ditf_core.matching import parse_points
    from ditf_core.model_folders import pipeline_folders

    def refused(check, error=ValueError):
        def run():
            try:
                check()
            except error:
                return
            raise AssertionError("not refused")

        return run

    text = json.dumps([{"x": i % 640, "y": i // 640} for i in range(100_000)])
    flux, many = build_tiny_flux(), torch.zeros(100_000, 2)
    timings = {
        f"100,000 points as KJNodes JSON ({len(text) / 1e6:.1f} MB of text)": median_seconds(
            refused(lambda: parse_points(text), DiTFInputError)),
        "100,000 points as a [K, 2] tensor": median_seconds(
            refused(lambda: parse_points(many), DiTFInputError)),
        "Flux resolution 4096 on a 384x288 image (with the largest allowed value)": median_seconds(
            refused(lambda: FluxFamily().check_resolution(flux, (384, 288), 4096))),
    }
    with tempfile.TemporaryDirectory() as root:
        for name in ("flux-dev", "org/models--org--sd35/snapshots/abc"):
            os.makedirs(os.path.join(root, name))
            open(os.path.join(root, name, "model_index.json"), "w").close()
        os.symlink(".", os.path.join(root, "loop"))  # a -> .
        os.symlink("..", os.path.join(root, "org", "up"))
        timings["listing models/diffusers holding the link loops loop -> . and org/up -> .."] = median_seconds(
            lambda: pipeline_folders(root))
    return timings


if __name__ == "__main__":
    raise SystemExit(main())
