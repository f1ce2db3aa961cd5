"""Per family: early exit at the family's default block vs a full forward pass, printed as ratios
(run: python bench/bench_families.py). Each family on a random config of ~12 blocks (its own block kinds on both
sides of any split), hidden 128, a 512 px image (1024 tokens): blocks dominate the cost, as in the real models."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the conditioning helpers live there

from helpers import family_conditioning  # noqa: E402

from ditf_core import extract_from_latents, family_for  # noqa: E402
from ditf_core.demo_model import build_tiny_family  # noqa: E402
from timing import best_of_interleaved  # noqa: E402

WIDE = dict(attention_head_dim=32, num_attention_heads=4)  # hidden 128 (diffusers-style names)
CONFIGS = {
    "flux": dict(num_layers=4, num_single_layers=8, **WIDE, axes_dims_rope=(8, 12, 12)),
    "sd3": dict(num_layers=12, **WIDE, caption_projection_dim=128),
    "flux2": dict(num_layers=4, num_single_layers=8, **WIDE, axes_dims_rope=(8, 8, 8, 8)),
    "chroma": dict(num_layers=4, num_single_layers=8, **WIDE, axes_dims_rope=(8, 12, 12)),
    "qwen_image": dict(num_layers=12, **WIDE, axes_dims_rope=(8, 12, 12)),
    "lumina2": dict(num_layers=12, hidden_size=128, num_attention_heads=4, num_kv_heads=2, axes_dim_rope=(8, 12, 12)),
    "z_image": dict(n_layers=12, dim=128, n_heads=4, n_kv_heads=4, axes_dims=[8, 12, 12]),
    "hidream": dict(num_layers=4, num_single_layers=8, **WIDE, axes_dims_rope=(8, 12, 12), llama_layers=[0, 1, 2, 3] * 3),
    "pixart": dict(num_layers=12, **WIDE, cross_attention_dim=128),
    "auraflow": dict(num_mmdit_layers=4, num_single_dit_layers=8, **WIDE, caption_projection_dim=128),
    "wan": dict(num_layers=12, **WIDE, ffn_dim=256),
}


def bench_early_exit(name: str) -> None:
    model = build_tiny_family(name, seed=0, **CONFIGS[name])
    family = family_for(model)
    size = 32 if family.patch == 1 else 64  # 1024 tokens either way
    latents = torch.randn(1, family.latent_channels(model), size, size, generator=torch.Generator().manual_seed(0))
    text, pooled = family_conditioning(model)
    layer = family.defaults(model).layer
    depth = len(family.blocks(model))

    def full():
        with torch.no_grad():
            family.forward(model, latents, 0.26, text, pooled if pooled is not None else torch.zeros(1, 1), 3.5)

    def early():
        extract_from_latents(model, latents, t=0.26, layer=layer, text_embeds=text, pooled=pooled)

    t_full, t_early = best_of_interleaved(full, early, repeats=3)
    print(f"{name:10s} early exit at default block {layer:2d} of {depth}: full {t_full * 1e3:7.1f} ms, "
          f"to block k {t_early * 1e3:7.1f} ms, speed-up {t_full / t_early:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(2)
    for family_name in (sys.argv[1:] or CONFIGS):
        bench_early_exit(family_name)
