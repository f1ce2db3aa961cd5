"""GPU benchmark (needs CUDA; run: python bench/bench_gpu.py): a full-size random-weight Flux.1-dev transformer in
bf16, 640 px, E = 8, k = 28, a real prompt length (512 T5 tokens).

Prints, for the model as --load-blocks auto holds it (blocks 0..28) and for the whole model (57 blocks):
1. one extraction's time (E = 8 early-exit passes to block 28, as one micro-batch) vs its FLOP bound: the FLOPs
   counted by torch.utils.flop_counter divided by the dense bf16 GEMM FLOP/s measured on the same GPU;
2. peak memory vs the weights, and the activations per row vs ditf_core.micro_batch's estimate;
3. the full forward pass (no early exit) vs the extraction.
Without CUDA it says so and exits; ``--smoke`` runs the same code on a tiny config on the CPU (checks the script only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ditf_core

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from ditf_core import extract_from_latents  # noqa: E402
from ditf_core.families.flux import image_position_ids, pack_latents  # noqa: E402
from ditf_core.micro_batch import row_bytes  # noqa: E402

GB = 1e9
FULL = dict(layer=28, latent=80, ensemble=8, text=512, gemm=8192, repeats=5)  # 640 px -> 80x80 latent, 40x40 tokens
SMOKE = dict(layer=3, latent=16, ensemble=2, text=16, gemm=256, repeats=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny config on the CPU: checks the script only")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU (a full-size Flux.1-dev transformer is ~24 GB in bf16); none here, so "
              "nothing was measured. `--smoke` checks the script on the CPU.")
        return 1
    device = torch.device("cpu" if args.smoke else "cuda")
    size = SMOKE if args.smoke else FULL
    dtype = torch.float32 if args.smoke else torch.bfloat16
    config = _config(args.smoke)
    gemm = gemm_flops(device, dtype, size["gemm"], size["repeats"])
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (smoke)'}, dense GEMM "
          f"{size['gemm']}^3 {str(dtype).removeprefix('torch.')}: {gemm / 1e12:.1f} TFLOP/s")
    inputs = _inputs(config, size, device, dtype)
    results = {}
    for name, blocks in (("blocks 0..k", size["layer"] + 1), ("whole model", None)):
        model = random_flux(config, blocks, device, dtype)
        results[name] = measure(model, inputs, size, device, gemm, full_forward=blocks is None)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    truncated, whole = results["blocks 0..k"], results["whole model"]
    estimate = row_bytes(image_tokens=(size["latent"] // 2) ** 2, text_tokens=size["text"],
                         hidden_size=config["num_attention_heads"] * config["attention_head_dim"], dtype=dtype)
    for name, r in results.items():
        print(f"{name}: weights {r['weights'] / GB:.2f} GB, extraction {r['seconds']:.3f} s for "
              f"{r['flops'] / 1e12:.1f} TFLOP = {r['flops'] / r['seconds'] / 1e12:.1f} TFLOP/s, "
              f"{r['seconds'] / (r['flops'] / gemm):.2f}x the FLOP bound; peak {_gb(r['peak'])} = "
              f"{_ratio(r['peak'], r['weights'])} the weights")
    if truncated["peak"] is not None:
        per_row = (truncated["peak"] - truncated["weights"]) / size["ensemble"]
        print(f"activations per row (peak - weights) / E: {per_row / GB:.3f} GB; micro-batch estimate "
              f"{estimate / GB:.3f} GB ({estimate / per_row:.2f}x the measured)")
        print(f"memory blocks 0..{size['layer']} / whole model: {truncated['peak'] / whole['peak']:.2f} (peak), "
              f"{truncated['weights'] / whole['weights']:.2f} (weights)")
    print(f"full forward (no early exit) {whole['forward_seconds']:.3f} s vs extraction to block {size['layer']} "
          f"{whole['seconds']:.3f} s: {whole['forward_seconds'] / whole['seconds']:.2f}x")
    print(json.dumps({name: {k: v for k, v in r.items()} for name, r in results.items()}, default=str))
    return 0


def measure(model, inputs: dict, size: dict, device, gemm: float, full_forward: bool) -> dict:
    def extract():
        extract_from_latents(model, inputs["latents"], t=0.26, layer=size["layer"], text_embeds=inputs["text"],
                             pooled=inputs["pooled"], noise=inputs["noise"])

    attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with FlopCounterMode(display=False, custom_mapping=attention) as counter:
        extract()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = _median_seconds(extract, size["repeats"], device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    result = {"weights": weights, "flops": counter.get_total_flops(), "seconds": seconds, "peak": peak}
    if full_forward:
        result["forward_seconds"] = _median_seconds(lambda: _forward(model, inputs), size["repeats"], device)
    return result


def random_flux(config: dict, blocks: int | None, device, dtype):
    """Flux.1-dev's architecture with random weights made on ``device`` (no CPU copy); only the first ``blocks``."""
    from diffusers import FluxTransformer2DModel

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are made in dtype (casting a diffusers model afterwards warns)
    try:
        with torch.device("meta"):
            model = FluxTransformer2DModel.from_config(config)
    finally:
        torch.set_default_dtype(default)
    if blocks is not None:  # what load_blocks="auto" keeps (see ditf_core.block_loading)
        double = min(blocks, len(model.transformer_blocks))
        model.transformer_blocks = model.transformer_blocks[:double]
        model.single_transformer_blocks = model.single_transformer_blocks[: blocks - double]
    model = model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.02, generator=generator)
            else:
                parameter.fill_(1.0 if "norm" in name else 0.0)
    return model.eval()


def gemm_flops(device, dtype, n: int, repeats: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / _median_seconds(lambda: a @ b, repeats * 4, device)


def _forward(model, inputs: dict) -> None:
    latents, text, pooled = inputs["latents"], inputs["text"], inputs["pooled"]
    rows, (h, w) = inputs["noise"].shape[0], latents.shape[-2:]
    with torch.no_grad():
        model(hidden_states=pack_latents(inputs["noise"][:, 0]), encoder_hidden_states=text.expand(rows, -1, -1),
              pooled_projections=pooled.expand(rows, -1), timestep=torch.full((rows,), 0.26, device=latents.device,
                                                                             dtype=latents.dtype),
              img_ids=image_position_ids(h // 2, w // 2, latents.device, latents.dtype),
              txt_ids=torch.zeros(text.shape[1], 3, device=latents.device, dtype=latents.dtype),
              guidance=torch.full((rows,), 3.5, device=latents.device, dtype=latents.dtype), return_dict=False)


def _inputs(config: dict, size: dict, device, dtype) -> dict:
    generator = torch.Generator().manual_seed(0)
    shape = (16, size["latent"], size["latent"])
    return {
        "latents": torch.randn(1, *shape, generator=generator).to(device, dtype),
        "noise": torch.randn(size["ensemble"], 1, *shape, generator=generator).to(device, dtype),
        "text": torch.randn(1, size["text"], config["joint_attention_dim"], generator=generator).to(device, dtype),
        "pooled": torch.randn(1, config["pooled_projection_dim"], generator=generator).to(device, dtype),
    }


def _config(smoke: bool) -> dict:
    config = json.loads((ROOT / "ditf_core" / "configs" / "flux-dev" / "config.json").read_text())
    if smoke:
        from ditf_core.demo_model import TINY_FLUX_CONFIG

        config = {**config, **TINY_FLUX_CONFIG}
    return config


def _median_seconds(fn, repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)  # torch counts the CUDA attention kernels, not the CPU one


def _gb(value) -> str:
    return "n/a (CPU)" if value is None else f"{value / GB:.2f} GB"


def _ratio(value, reference) -> str:
    return "n/a" if value is None else f"{value / reference:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
