"""Extraction benchmarks, printed as ratios (run: python bench/bench_extract.py).

1. early exit at mid-depth vs a full forward pass (random mid-size Flux);
2. capture overhead: extract_from_latents vs driving the blocks by hand (the tests' reference);
3. VAE and text encodes per image and prompt with an ensemble of 8;
4. max |difference| between extract_from_latents and the by-hand reference (fp32), Flux and SD3.5.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the by-hand reference lives there

from reference_recipe import block_input_by_hand, reference_features  # noqa: E402

from ditf_core import DiTFPipeline, extract_from_latents  # noqa: E402
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae  # noqa: E402
from ditf_core.families.flux import image_position_ids, pack_latents  # noqa: E402
from ditf_core.samples import sample_scene  # noqa: E402
from timing import median_seconds  # noqa: E402

def mid_size_flux() -> torch.nn.Module:
    """12 blocks (4 double + 8 single), hidden 256: blocks dominate the cost, as in Flux.1."""
    return build_tiny_flux(seed=0, num_layers=4, num_single_layers=8, attention_head_dim=32, num_attention_heads=8,
                           axes_dims_rope=(8, 12, 12))


def bench_early_exit() -> None:
    model = mid_size_flux()
    latents = torch.randn(2, 16, 64, 64)  # 512 px, 1024 tokens, batch 2
    text, pooled = torch.zeros(1, 32, 32).expand(2, -1, -1), torch.zeros(2, 32)
    layer = 6  # mid-depth of 12, like k = 28 of 57

    def full():
        with torch.no_grad():
            model(hidden_states=pack_latents(latents), encoder_hidden_states=text, pooled_projections=pooled,
                  timestep=torch.full((2,), 0.26), img_ids=image_position_ids(32, 32, "cpu", torch.float32),
                  txt_ids=torch.zeros(32, 3), guidance=torch.full((2,), 3.5), return_dict=False)

    def early():
        extract_from_latents(model, latents, t=0.26, layer=layer, text_embeds=text[:1], pooled=pooled[:1])

    t_full, t_early = median_seconds(full, 7), median_seconds(early, 7)
    print(f"early exit at block {layer}/12: full forward {t_full * 1e3:.1f} ms, to block k {t_early * 1e3:.1f} ms, "
          f"speed-up {t_full / t_early:.2f}x (target >= 1.8x)")


def bench_capture_overhead() -> None:
    model = mid_size_flux()
    latents = torch.randn(2, 16, 64, 64)
    text, pooled = torch.zeros(1, 32, 32), torch.zeros(1, 32)
    layer = 9

    def ours():
        extract_from_latents(model, latents, t=0.26, layer=layer, text_embeds=text, pooled=pooled)

    def by_hand():
        with torch.no_grad():
            block_input_by_hand(model, latents, t=0.26, layer=layer, text=text, pooled=pooled, guidance=3.5)

    # Interleave the two to cancel machine drift; compare medians.
    pairs = [(median_seconds(ours, 3), median_seconds(by_hand, 3)) for _ in range(3)]
    t_ours = statistics.median(p[0] for p in pairs)
    t_hand = statistics.median(p[1] for p in pairs)
    print(f"capture overhead: hooks+early exit {t_ours * 1e3:.1f} ms vs blocks by hand {t_hand * 1e3:.1f} ms, "
          f"overhead {100 * (t_ours / t_hand - 1):+.1f}% (target <= 5%)")


def bench_encodes() -> None:
    pipeline = DiTFPipeline(build_tiny_flux(), build_tiny_vae())
    calls = {"vae": 0}
    encode = pipeline.vae.encode

    def counting_encode(x):
        calls["vae"] += x.shape[0]
        return encode(x)

    pipeline.vae.encode = counting_encode
    images = [sample_scene(seed=s, size=(160, 128)) for s in range(3)]
    for image in images:
        pipeline.extract(image, ensemble=8, resolution=160, prompt="a photo")
    print(f"encodes with E=8: {len(images)} images, 1 prompt -> {calls['vae']} VAE image encodes "
          f"({calls['vae'] / len(images):.0f} per image), {pipeline.prompt_encoder.encode_calls} text encode(s)")


def bench_parity() -> None:
    for name, model in (("flux", build_tiny_flux()), ("sd3.5", build_tiny_sd3(sd35=True))):
        worst = 0.0
        for layer in range(len(model.transformer_blocks) + len(getattr(model, "single_transformer_blocks", []))):
            generator = torch.Generator().manual_seed(layer)
            latents = torch.randn(2, 16, 16, 24, generator=generator)
            noise = torch.randn(4, 2, 16, 16, 24, generator=generator)
            text = torch.randn(1, 8, 32, generator=generator)
            pooled = torch.randn(1, 32, generator=generator)
            ours = extract_from_latents(model, latents, t=0.26, layer=layer, text_embeds=text, pooled=pooled,
                                        noise=noise, discard=(3, 17))
            with torch.no_grad():
                reference = reference_features(model, latents, noise, t=0.26, layer=layer, text=text, pooled=pooled,
                                               discard=(3, 17))
            worst = max(worst, (ours - reference).abs().max().item())
        print(f"parity {name}: max |ours - by-hand reference| over all layers, E=4, B=2: {worst:.2e} (target <= 1e-5)")


if __name__ == "__main__":
    torch.set_num_threads(2)
    bench_early_exit()
    bench_capture_overhead()
    bench_encodes()
    bench_parity()
