"""Benchmark: video propagation and tracking with features given (extraction excluded).

    PYTHONPATH=. python bench/bench_video.py [--repeats 3] [--frames 10] [--skip-clip]

1. One propagation step at the 960 px Flux grid (60 x 36 cells, C = 3072; anchor + 7 context frames, 3 labels,
   r = 12, top-5, tau = 0.1): our windowed affinity (``ditf_core.video.propagate_labels``) against DINO's
   dense-then-masked computation (``ditf_core.video.reference.propagate_labels_dense``). Same random unit
   features for both; the answers are compared. Time: median of --repeats runs after a warm-up. Memory: each
   variant runs in a fresh subprocess; its peak is the process's peak resident set size during the run (VmHWM,
   reset through /proc/self/clear_refs once the inputs are built) minus its resident size at that moment
   (tracemalloc does not see torch's CPU allocations), so it counts every temporary (for the reference also its
   [hw, hw] neighbourhood mask, which DINO's script builds once and keeps).
2. Frames per second of propagation (``LabelPropagator.step`` + the protocol's upsampling to 960 x 576) and of
   tracking 20 points (``PointTracker.step``) over --frames frames whose features are given (precomputed random
   features, cycled).
3. Peak memory at 50 vs 200 frames: propagation + tracking through a clip whose features are made per frame on
   the fly (never held), at the 960 px grid with C = 256 channels to keep the run short (the engine's held bytes
   scale with C; the flatness in clip length does not depend on it). Reported: the RSS growth and the engine's
   own accounting (``LabelPropagator.peak_bytes``, ``PointTracker.held_bytes``).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from timing import median_seconds

GRID = (36, 60)  # (h, w): 960 x 576 px at 16 px per cell
CHANNELS, CONTEXT, LABELS, POINTS = 3072, 8, 3, 20
SETTINGS = dict(radius=12, top_k=5, temperature=0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=10, help="frames for the frames-per-second measurement")
    parser.add_argument("--skip-clip", action="store_true", help="skip the 50 vs 200 frame memory runs (~minutes)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    step = {name: spawn(name, args) for name in ("windowed", "dense")}
    agreement = spawn("agreement", args)
    rates = spawn("rates", args)
    clips = {} if args.skip_clip else {n: spawn("clip", args, "--length", str(n)) for n in (50, 200)}
    report(step, agreement, rates, clips, args)
    return 0


# --- workers (each in its own process) ----------------------------------------------------------------------------
def step_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    h, w = GRID
    context = F.normalize(torch.randn(CONTEXT, CHANNELS, h, w, generator=generator), dim=1)
    query = F.normalize(torch.randn(CHANNELS, h, w, generator=generator), dim=0)
    labels = torch.softmax(torch.randn(CONTEXT, LABELS, h, w, generator=generator) * 3, dim=1)
    return query, context, labels


def run_step(name: str, args) -> dict:
    from ditf_core.video import propagate_labels
    from ditf_core.video.reference import propagate_labels_dense

    fn = {"windowed": propagate_labels, "dense": propagate_labels_dense}[name]
    query, context, labels = step_inputs()
    baseline = start_peak()
    fn(query, context, labels, **SETTINGS)
    peak = peak_bytes() - baseline
    seconds = median_seconds(lambda: fn(query, context, labels, **SETTINGS), args.repeats)
    return {"seconds": seconds, "peak_bytes": peak}


def run_agreement(args) -> dict:
    from ditf_core.video import propagate_labels
    from ditf_core.video.reference import propagate_labels_dense

    query, context, labels = step_inputs()
    ours = propagate_labels(query, context, labels, **SETTINGS)
    reference = propagate_labels_dense(query, context, labels, **SETTINGS)
    return {"max_abs_diff": float((ours - reference).abs().max()),
            "same_argmax": float((ours.argmax(0) == reference.argmax(0)).float().mean())}


def synthetic_features(index: int, channels: int):
    """Random unit features of one 960 x 576 frame (seeded by its index), as DiTFeatures."""
    from ditf_core.features import DiTFeatures
    from ditf_core.mapping import PixelMapping

    h, w = GRID
    generator = torch.Generator().manual_seed(1000 + index)
    features = F.normalize(torch.randn(1, channels, h, w, generator=generator), dim=1)
    return DiTFeatures(features, PixelMapping((w * 16, h * 16), (w * 16, h * 16), (w, h)))


def run_rates(args) -> dict:
    from ditf_core.video import LabelPropagator, PointTracker, labels_to_image

    frames = [synthetic_features(i, CHANNELS) for i in range(4)]
    h, w = GRID
    start = torch.zeros(LABELS, h, w)
    start[0], start[1, 10:20, 20:35], start[2, 25:30, 40:50] = 1, 1, 1
    start[0] -= start[1] + start[2]
    propagator = LabelPropagator()
    propagator.start(frames[0].features[0], start)
    begin = time.perf_counter()
    for i in range(args.frames):
        features = frames[1 + i % 3]
        labels_to_image(propagator.step(features.features[0]), features)
    propagation = args.frames / (time.perf_counter() - begin)
    points = torch.rand(POINTS, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([w * 16 - 1, h * 16 - 1])
    tracker = PointTracker(frames[0], points)
    begin = time.perf_counter()
    for i in range(args.frames):
        tracker.step(frames[1 + i % 3])
    tracking = args.frames / (time.perf_counter() - begin)
    return {"propagation_fps": propagation, "tracking_fps": tracking}


def run_clip(args) -> dict:
    from ditf_core.video import LabelPropagator, PointTracker, labels_to_image

    channels = 256
    h, w = GRID
    start = torch.zeros(2, h, w)
    start[1, 10:20, 20:35] = 1
    start[0] = 1 - start[1]
    propagator = LabelPropagator()
    baseline = start_peak()
    tracker = None
    for index in range(args.length):
        features = synthetic_features(index, channels)  # made on the fly: the clip is never held
        if index == 0:
            propagator.start(features.features[0], start)
            tracker = PointTracker(features, torch.tensor([[300.0, 200.0], [600.0, 400.0]]))
            continue
        labels_to_image(propagator.step(features.features[0]), features)
        tracker.step(features)
    return {"peak_bytes": peak_bytes() - baseline, "propagator_peak_bytes": propagator.peak_bytes,
            "tracker_bytes": tracker.held_bytes}


WORKERS = {"windowed": lambda a: run_step("windowed", a), "dense": lambda a: run_step("dense", a),
           "agreement": run_agreement, "rates": run_rates, "clip": run_clip}


# --- driver --------------------------------------------------------------------------------------------------------
def spawn(worker: str, args, *extra: str) -> dict:
    print(f"running {worker} {' '.join(extra)} ...", file=sys.stderr, flush=True)
    command = [sys.executable, __file__, "--worker", worker, "--repeats", str(args.repeats), "--frames",
               str(args.frames), *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_peak() -> int:
    """Reset the process's peak resident size to its current size; returns that size in bytes (Linux)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status("VmRSS")


def peak_bytes() -> int:
    """The process's peak resident size since :func:`start_peak`, in bytes."""
    return _status("VmHWM")


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this bench measures memory on Linux)")


def report(step: dict, agreement: dict, rates: dict, clips: dict, args) -> None:
    mb = 1 / 2**20
    windowed, dense = step["windowed"], step["dense"]
    h, w = GRID
    print(f"Propagation step, {w} x {h} cells, C = {CHANNELS}, {CONTEXT} context frames, {LABELS} labels, r = 12, "
          f"top-5 (median of {args.repeats}, torch threads: {torch.get_num_threads()}):")
    print(f"  dense-then-masked (DINO):  {dense['seconds']:7.2f} s   peak +{dense['peak_bytes'] * mb:7.0f} MB")
    print(f"  windowed (ours):           {windowed['seconds']:7.2f} s   peak +{windowed['peak_bytes'] * mb:7.0f} MB")
    print(f"  ratios: {dense['seconds'] / windowed['seconds']:.1f}x faster, "
          f"{dense['peak_bytes'] / windowed['peak_bytes']:.1f}x less peak memory; labels max |diff| "
          f"{agreement['max_abs_diff']:.1e}, same argmax on {100 * agreement['same_argmax']:.2f}% of cells")
    print(f"With features given ({args.frames} frames, C = {CHANNELS}): propagation {rates['propagation_fps']:.2f} "
          f"frames/s (incl. upsampling to 960 x 576), tracking {POINTS} points {rates['tracking_fps']:.1f} frames/s")
    if clips:
        short, long = clips[50], clips[200]
        print(f"Clip length (propagation + tracking, features made per frame, C = 256): peak RSS growth 50 frames "
              f"+{short['peak_bytes'] * mb:.0f} MB, 200 frames +{long['peak_bytes'] * mb:.0f} MB "
              f"(ratio {long['peak_bytes'] / short['peak_bytes']:.2f}); engine-held bytes "
              f"{short['propagator_peak_bytes'] * mb:.1f} / {long['propagator_peak_bytes'] * mb:.1f} MB (propagator), "
              f"{short['tracker_bytes'] * mb:.1f} / {long['tracker_bytes'] * mb:.1f} MB (tracker)")


if __name__ == "__main__":
    sys.exit(main())
