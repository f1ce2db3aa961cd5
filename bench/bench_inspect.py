"""Inspector benchmarks, printed as ratios (run: python bench/bench_inspect.py).

1. full-depth sweep: ONE early-exit pass capturing every block vs the sum of one pass per block (tiny demo DiT,
   and a 12-block mid-size Flux where blocks dominate the cost as in Flux.1);
2. inspect_pipeline on the demo DiT and the sample pair: capture vs analysis + pictures;
3. render time of each picture, on the demo DiT and on Flux.1-sized synthetic maps (3072 channels, 57 blocks).
"""

from __future__ import annotations

import time

import torch

from ditf_core import DiTFPipeline, capture_ensemble
from ditf_core.demo_model import build_demo_dit, build_tiny_flux
from ditf_core.families import Modulation
from ditf_core.inspect import channel_stats, inspect_captures, inspect_pipeline, sweep_captures
from ditf_core.inspect import plots
from ditf_core.recipe import EnsembleCapture
from ditf_core.samples import sample_pair
from timing import best_of_interleaved, median_seconds

REPEATS = 5

def bench_sweep(name: str, model: torch.nn.Module, size: int, ensemble: int = 4, batch: int = 2) -> None:
    depth = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 16, size, size, generator=generator)
    noise = torch.randn(ensemble, batch, 16, size, size, generator=generator)
    text, pooled = torch.zeros(1, 32, 32), torch.zeros(1, 32)

    def capture(layers):
        return capture_ensemble(model, latents, t=0.26, layers=layers, text_embeds=text, pooled=pooled, noise=noise)

    def one_pass():
        sweep_captures(capture(range(depth)))

    def per_block():
        for layer in range(depth):
            capture([layer])

    t_one, t_each = best_of_interleaved(one_pass, per_block, REPEATS)
    tokens = (size // 2) ** 2
    print(f"full-depth sweep, {name} ({depth} blocks, {tokens} tokens, E={ensemble}, B={batch}): one pass "
          f"{t_one * 1e3:.0f} ms (incl. sweep statistics) vs {depth} per-block passes {t_each * 1e3:.0f} ms -> "
          f"{t_each / t_one:.2f}x saving (target >= 2x; best of {REPEATS}, interleaved)")


def bench_inspect_pipeline() -> None:
    pipeline = DiTFPipeline.demo()
    scene_a, scene_b, _ = sample_pair()
    inspect_pipeline(pipeline, [scene_a, scene_b], ensemble=2, resolution=256)  # warm-up (fonts, kernels)
    started = time.perf_counter()
    inspection = inspect_pipeline(pipeline, [scene_a, scene_b])
    total = time.perf_counter() - started
    seconds = inspection.report["seconds"]
    print(f"inspect_pipeline, demo DiT, 2 images 640 px, E=8, full sweep: {total:.2f} s "
          f"(capture {seconds['capture']:.2f} s, analysis + {len(inspection.figures)} pictures "
          f"{seconds['analysis_and_plots']:.2f} s)")


def bench_pictures() -> None:
    pipeline = DiTFPipeline.demo()
    scene_a, scene_b, _ = sample_pair()
    run = pipeline.capture([scene_a, scene_b], layers=range(pipeline.depth), ensemble=2)
    images = run.pixels
    flux = flux_sized_captures()
    for label, captures, pictures in (("demo DiT (C=64, 1200 tokens)", run.layers, images),
                                      ("Flux.1-sized synthetic (C=3072, 1200 tokens, 57 blocks)", flux, None)):
        sweep = sweep_captures(captures)
        layer = max(captures) // 2
        capture = captures[layer]
        stats = channel_stats(capture.hidden)
        massive = stats.massive()
        gates = [("own gate", capture.modulation.gate, massive)]
        timings = {
            "magnitudes": median_seconds(lambda: plots.channel_magnitude_plot(stats, massive, ratio=100, title="t"), 1),
            "surface": median_seconds(lambda: plots.magnitude_surface_plot(capture.hidden[0], massive, title="t"), 1),
            "gate": median_seconds(lambda: plots.gate_alignment_plot(stats, massive, gates, title="t"), 1),
            "pca": median_seconds(lambda: plots.ablation_pca_plot(capture, massive, pictures, title="t"), 1),
            "sweep": median_seconds(lambda: plots.layer_sweep_plot(sweep, title="t", split=19), 1),
        }
        whole = median_seconds(lambda: inspect_captures(captures, layers=[layer], images=pictures), 1)
        print(f"pictures, {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
              + f" (target < 2 s each); whole inspect_captures {whole:.2f} s")


def flux_sized_captures(depth: int = 57, tokens: int = 1200, channels: int = 3072) -> dict[int, EnsembleCapture]:
    generator = torch.Generator().manual_seed(0)
    captures = {}
    for layer in range(depth):
        hidden = torch.randn(1, tokens, channels, generator=generator)
        if layer >= 3:  # massive from block 3 on, like Flux.1-dev's 154 and 1446
            hidden[..., 154] += 600.0
            hidden[..., 1446] -= 900.0
        gate = torch.randn(1, channels, generator=generator) * 0.1
        captures[layer] = EnsembleCapture(hidden, Modulation(gate * 0, gate * 0, gate), (30, 40))
    return captures


if __name__ == "__main__":
    torch.set_num_threads(2)
    bench_sweep("tiny demo DiT", build_demo_dit(), size=64)
    bench_sweep("mid-size Flux, hidden 256", build_tiny_flux(seed=0, num_layers=4, num_single_layers=8,
                attention_head_dim=32, num_attention_heads=8, axes_dims_rope=(8, 12, 12)), size=64, ensemble=2)
    bench_inspect_pipeline()
    bench_pictures()
