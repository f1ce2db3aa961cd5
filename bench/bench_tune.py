"""The layer finder's one capture of every block per t vs one capture per block (run: python bench/bench_tune.py).

A random 16-block Flux (4 double + 12 single, hidden 256) on one 512 px image with 2 warps at one t: the finder
captures all 16 blocks in one early-exit pass; the alternative runs a pass to each block separately (what
per-layer extraction would cost). Expect a speed-up of about (depth + 1) / 2 or more, minus the shared matching."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ditf_core import DiTFPipeline
from ditf_core.demo_model import build_tiny_flux, build_tiny_vae
from ditf_core.tune import find_layer, pipeline_extractor

SETTINGS = dict(resolution=512, ensemble=1)


def image(seed: int = 0, size=(384, 512)) -> torch.Tensor:
    cells = torch.rand(1, 3, size[0] // 16, size[1] // 16, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(cells, size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def main() -> None:
    model = build_tiny_flux(0, num_layers=4, num_single_layers=12, attention_head_dim=32, num_attention_heads=8,
                            axes_dims_rope=(8, 12, 12))
    pipeline = DiTFPipeline(model, build_tiny_vae(0))
    depth = pipeline.depth
    images, ts = [image()], (0.26,)
    one_pass = pipeline_extractor(pipeline, **SETTINGS)

    def per_block(pixels, t):  # one capture per block, each stopping at that block
        found = {}
        for layer in range(depth):
            found.update(pipeline_extractor(pipeline, layers=[layer], **SETTINGS)(pixels, t))
        return found

    find_layer(one_pass, images, ts=ts, warps=2)  # warm-up
    timings = {}
    for label, extract in (("one pass per t", one_pass), ("one pass per block", per_block)):
        start = time.perf_counter()
        search = find_layer(extract, images, ts=ts, warps=2)
        timings[label] = time.perf_counter() - start
        print(f"{label:20s}: {timings[label]:.2f} s (best layer {search.best_layer})")
    ratio = timings["one pass per block"] / timings["one pass per t"]
    print(f"layer finder, {depth} blocks: one pass per t is {ratio:.1f}x faster than per-block passes "
          f"(depth/2 = {depth / 2:.0f}x)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
