"""Massive activations at work in ComfyUI: sampling cost and memory of the patched MODELs, printed as ratios.

Run with ComfyUI's Python:  COMFYUI_PATH=/path/to/ComfyUI python bench/bench_transport.py

1. sampling time of Transport (text source, the defaults: all blocks, top-k 12, source mask), Detail Guidance and
   Disruption vs plain sampling (KSampler's euler, CFG 1 and 2), on a mid-size random Flux (12 blocks, hidden 512,
   256 image tokens) whose blocks dominate the cost as in Flux.1 (targets: transport <= 2.1x, Detail Guidance
   <= 2.1x, disruption <= 1.05x); CPU time of this process (one thread: run with OMP_NUM_THREADS=1), fastest of
   interleaved runs, so other load on a shared machine counts least;
2. extra peak memory of transport over plain sampling at 2 and 20 steps (hidden 256, 1024 image tokens; each run in
   a fresh process; the peak resident set size of the sampling itself, measured by resetting the kernel's peak mark
   after loading): it must not grow with the step count (the source row and the kept tokens of one step only).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(Path(__file__).parent)]

from timing import best_of_interleaved  # noqa: E402

TIME_MODEL = dict(hidden=512, latent=(1, 16, 32, 32))  # 256 px: 256 image tokens
MEMORY_MODEL = dict(hidden=256, latent=(1, 16, 64, 64))  # 512 px: 1024 image tokens


def setup(hidden: int):
    """(the pack's node module, a random 12-block Flux MODEL of width ``hidden``) with ComfyUI imported here."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout (and run with its Python)")
    sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import folder_paths

    import tiny_models
    from conftest import load_package
    from ditf_core.demo_model import DEMO_MASSIVE_CHANNELS, build_tiny_flux, plant_massive_activations

    folder_paths.set_temp_directory(str(Path(os.environ.get("TMPDIR", "/tmp")) / "ditf_bench_temp"))
    pack = load_package("ditf_pack_bench", execute=True)
    nodes = sys.modules[f"{pack.__name__}.nodes.nodes_ma_patch"]
    transformer = build_tiny_flux(0, num_layers=4, num_single_layers=8, attention_head_dim=64,
                                  num_attention_heads=hidden // 64, axes_dims_rope=(16, 24, 24))
    plant_massive_activations(transformer, 1, DEMO_MASSIVE_CHANNELS)
    return nodes, tiny_models.comfy_flux(transformer)


def conditioning(seed):
    context = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(seed))
    return [[context, {"pooled_output": torch.zeros(1, 32), "guidance": 3.5}]]


def patched(nodes, model, kind):
    if kind == "transport":
        return nodes.MassiveActivationTransport.execute(
            model, blocks="all", start_percent=0.0, end_percent=1.0, top_k=12, mask="source", strength=1.0, seed=0,
            source_conditioning=conditioning(7)).result[0]
    if kind == "detail guidance":
        return nodes.DetailGuidance.execute(model, layer=-1, weight=1.0, channels="auto", start_percent=0.0,
                                            end_percent=1.0).result[0]
    if kind == "disruption":
        return nodes.MassiveActivationDisruption.execute(model, blocks="all", start_percent=0.0, end_percent=1.0,
                                                         top_k=12, control=False).result[0]
    return model


def sampler(model, steps, cfg, shape):
    import comfy.sample

    latent = torch.zeros(shape)
    noise = comfy.sample.prepare_noise(latent, 1)

    def run():
        with torch.inference_mode():
            comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", conditioning(3), conditioning(4), latent,
                                seed=1, disable_pbar=True)

    return run


def bench_time(nodes, model) -> None:
    for cfg in (1.0, 2.0):
        plain = sampler(model, 4, cfg, TIME_MODEL["latent"])
        for kind, target in (("transport", 2.1), ("detail guidance", 2.1), ("disruption", 1.05)):
            run = sampler(patched(nodes, model, kind), 4, cfg, TIME_MODEL["latent"])
            t_plain, t_patched = best_of_interleaved(plain, run, repeats=5, clock=time.process_time)
            print(f"{kind:>16}, CFG {cfg:g}: plain {t_plain:.2f} s, patched {t_patched:.2f} s CPU per 4 steps, "
                  f"ratio {t_patched / t_plain:.2f}x (target <= {target}x)")


def peak_rss_mb(kind: str, steps: int) -> float:
    """Peak RSS growth (MB) of sampling once with ``kind`` (plain / transport), in a fresh process."""
    command = [sys.executable, __file__, "--worker", kind, str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])["sampling_peak_mb"]


def worker(kind: str, steps: int) -> None:
    nodes, model = setup(MEMORY_MODEL["hidden"])
    run = sampler(patched(nodes, model, kind), steps, 1.0, MEMORY_MODEL["latent"])
    gc.collect()
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS: Linux >= 4.0
    run()
    print(json.dumps({"sampling_peak_mb": _status_mb("VmHWM") - before}))


def _status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def bench_memory() -> None:
    extra = {}
    for steps in (2, 20):
        plain, transport = peak_rss_mb("plain", steps), peak_rss_mb("transport", steps)
        extra[steps] = transport - plain
        print(f"sampling peak RSS growth at {steps:>2} steps: plain {plain:.0f} MB, transport {transport:.0f} MB, "
              f"extra {transport - plain:+.0f} MB")
    tokens = MEMORY_MODEL["latent"][-1] * MEMORY_MODEL["latent"][-2] // 4
    row = MEMORY_MODEL["hidden"] * tokens * 4 / 2**20  # one row of image tokens, float32, in MB
    print(f"extra memory at 20 vs 2 steps: {extra[20] - extra[2]:+.0f} MB (no per-step growth expected); one image-"
          f"token row is {row:.1f} MB, the kept source tokens of 12 blocks {12 * row:.0f} MB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        if "--memory-only" not in sys.argv:
            bench_time(*setup(TIME_MODEL["hidden"]))
        if "--time-only" not in sys.argv:
            bench_memory()
