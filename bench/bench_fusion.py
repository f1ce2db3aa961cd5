"""DINOv2 fusion and co-segmentation benchmarks, printed as ratios (run: python bench/bench_fusion.py).

1. fusion overhead vs DiTF extraction alone at 640 px on the tiny models (demo DiT + tiny VAE, ensemble 8; a tiny
   random transformers DINOv2 at SD-DINO's 840 px);
2. the fusion math at full width (Flux 40 x 40 x 3072 + DINOv2-L 60 x 60 x 1024 per image), with and without a
   256-dim PCA fitted jointly over a pair;
3. co-segmentation of 16 images x 1600 cells x 3072 channels (640 px Flux): time and peak memory, in a fresh
   process so that the peak is this job's alone.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import best_of_interleaved, median_seconds  # noqa: E402

from ditf_core import DiTFeatures, DiTFPipeline, PixelMapping  # noqa: E402
from ditf_core.fusion import DinoFeatures, TransformersDino, dino_mapping, fuse_dino, fuse_dino_jointly  # noqa: E402
from ditf_core.samples import sample_scene  # noqa: E402

MB = 2**20


def tiny_dino() -> TransformersDino:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518)
    return TransformersDino(Dinov2Model(config).eval(), device="cpu", dtype=torch.float32)


def bench_overhead_on_tiny_models() -> None:
    pipeline = DiTFPipeline.demo(device="cpu")
    dino = tiny_dino()
    image = sample_scene(size=(640, 480))

    def extract():
        return pipeline.extract(image, resolution=640, ensemble=8)

    def extract_and_fuse():
        return fuse_dino(extract(), dino.encode(image, resolution=840))

    alone, fused = best_of_interleaved(extract, extract_and_fuse, 3)
    encode = median_seconds(lambda: dino.encode(image, resolution=840), 3)
    print(f"tiny models, 640 px, ensemble 8: extraction {alone * 1e3:.0f} ms, + DINOv2 (840 px) and fusion "
          f"{fused * 1e3:.0f} ms: ratio {fused / alone:.2f}x (DINOv2 encode alone {encode * 1e3:.0f} ms)")


def full_width_pair():
    """Two 640 x 640 images: Flux DiTF maps [1, 3072, 40, 40] and DINOv2-L maps [1, 1024, 60, 60]."""
    generator = torch.Generator().manual_seed(0)
    mapping = PixelMapping((640, 640), (640, 640), (40, 40))
    patches = dino_mapping(640, 640, 840)
    ditf = [DiTFeatures(torch.randn(1, 3072, 40, 40, generator=generator), mapping) for _ in range(2)]
    dino = [DinoFeatures(torch.randn(1, 1024, 60, 60, generator=generator), patches, {"name": "bench"})
            for _ in range(2)]
    return ditf, dino


def bench_full_width_math() -> None:
    ditf, dino = full_width_pair()
    plain = median_seconds(lambda: fuse_dino_jointly(ditf, dino), 5)
    reduced = median_seconds(lambda: fuse_dino_jointly(ditf, dino, pca_dims=256), 1)
    channels = fuse_dino_jointly(ditf, dino, pca_dims=256)[0].channels
    print(f"fusion math, a 640 px pair at full width (Flux 3072 + DINOv2-L 1024 channels): {plain * 1e3:.0f} ms; "
          f"with a joint 256-dim PCA {reduced * 1e3:.0f} ms ({channels} channels, {4096 / channels:.1f}x narrower)")


def _cosegment_job(queue) -> None:
    """In a fresh process: 16 x 1600 x 3072 features that blend 8 parts smoothly over each image (like real feature
    maps: regions with soft borders), built image by image so that building them needs no more than the features;
    then co-segment them (K = 8) with the peak-memory counter reset just before."""
    from ditf_core.cosegment import cosegment

    generator = torch.Generator().manual_seed(0)
    parts = torch.nn.functional.normalize(torch.randn(8, 3072, generator=generator), dim=1)
    maps = torch.empty(16, 3072, 40, 40)
    for image in maps:
        logits = torch.nn.functional.interpolate(torch.randn(1, 8, 5, 5, generator=generator) * 4, size=(40, 40),
                                                 mode="bilinear", align_corners=False)[0]
        weights = logits.softmax(dim=0)  # [8, 40, 40], smooth
        image.copy_(torch.einsum("kc,khw->chw", parts, weights) + 0.02 * torch.randn(3072, 40, 40, generator=generator))
    features = DiTFeatures(maps, PixelMapping((640, 640), (640, 640), (40, 40)))
    before = _resident_bytes("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    result = cosegment(features, 8, seed=0)
    elapsed = time.perf_counter() - started
    queue.put((elapsed, before, _resident_bytes("VmHWM"), maps.numel() * 4, result.iterations, result.sizes.tolist()))


def _resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset the peak resident set size (Linux >= 4.0: write 5 to clear_refs); the job measures from here."""
    Path("/proc/self/clear_refs").write_text("5")


def bench_cosegment() -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    job = context.Process(target=_cosegment_job, args=(queue,))
    job.start()
    elapsed, before, peak, size, iterations, sizes = queue.get()
    job.join()
    cells = 16 * 1600
    print(f"co-segmentation of 16 images x 1600 cells x 3072 channels (K = 8): {elapsed:.2f} s, {iterations} K-means "
          f"steps; features {size / MB:.0f} MB, peak memory above them {(peak - before) / MB:.0f} MB "
          f"({(peak - before) / size:.2f}x the features; an N x N distance matrix would be {cells**2 * 4 / MB:.0f} MB)")
    print(f"  cluster sizes {sizes} (8 parts blended smoothly)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    bench_overhead_on_tiny_models()
    bench_full_width_math()
    bench_cosegment()
