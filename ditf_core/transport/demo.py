"""The demo's massive-activation section, on a tiny planted model (RANDOM weights): the MA mask of a planted object,
disruption of the MA channels against the control, and a transport strength sweep, with one picture.

The model is the demo DiT (massive channels 13 and 41 planted after block 1) whose massive channels also read the
latent's channel 0 at the input - so an object drawn into that channel leaves a massive-activation footprint, as
salient objects do in real DiTs. Samples come from a plain Euler flow sampler around the diffusers transformer, with
the patches applied by :func:`ditf_core.transport.diffusers_hooks.massive_activations`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..capture import capture_blocks
from ..demo_model import DEMO_MASSIVE_CHANNELS, build_demo_dit
from ..families import family_for
from ..outputs import save_image
from ..visualize import captioned_grid, pca_rgb, upsample_rgb
from .diffusers_hooks import DisruptionPatch, TransportPatch, massive_activations
from .mask import ma_mask
from .patches import Disruption, Transport

FOREGROUND_STRENGTH = 200.0  # massive-channel units per unit of latent channel 0 (the channels' own spread is ~10)
SCENE = 16  # latent cells per side (8 x 8 tokens)
STEPS = 4
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def build_foreground_dit(seed: int = 0, strength: float = FOREGROUND_STRENGTH) -> nn.Module:
    """The demo DiT whose massive channels also carry ``strength`` x the latent's channel 0 (mean over each token's
    2 x 2 cells) from the input embedding on."""
    transformer = build_demo_dit(seed)
    embed = transformer.x_embedder  # packed token feature = latent channel * 4 + cell
    with torch.no_grad():
        for channel in DEMO_MASSIVE_CHANNELS:
            embed.weight[channel] = 0.0
            embed.weight[channel, 0:4] = strength / 4
            embed.bias[channel] = 0.0
    return transformer


def planted_scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent [1, 16, 16, 16] with an object in channel 0 (+1 inside, -1 outside) over small noise, the object's
    token mask [8, 8])."""
    generator = torch.Generator().manual_seed(seed)
    latent = 0.1 * torch.randn(1, 16, SCENE, SCENE, generator=generator)
    latent[:, 0] = -1.0
    latent[:, 0, 4:12, 6:14] = 1.0
    truth = torch.zeros(SCENE // 2, SCENE // 2)
    truth[2:6, 3:7] = 1.0
    return latent, truth


def iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    """Intersection over union of two {0, 1} masks of one shape."""
    union = float(((mask + truth) > 0).sum())
    return float((mask * truth).sum()) / union if union else 1.0


def sample_flow(transformer: nn.Module, noise: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor,
                steps: int = STEPS) -> torch.Tensor:
    """Euler flow sampling from sigma 1 to 0: noise [B, 16, H, W] -> latent [B, 16, H, W] (the diffusers model
    called as pipelines call it, so context-manager patches apply)."""
    family = family_for(transformer)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    x = noise
    with torch.no_grad():
        for sigma, following in zip(sigmas[:-1], sigmas[1:]):
            velocity = family.forward(transformer, x, float(sigma), text, pooled, 3.5)[0]
            x = x + (following - sigma) * unpack(velocity, x.shape[-2], x.shape[-1])
    return x


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flux's packed tokens [B, (H/2)(W/2), 4C] -> latents [B, C, H, W] (inverse of ``families.flux.pack_latents``)."""
    batch, _, packed = tokens.shape
    cells = tokens.reshape(batch, height // 2, width // 2, packed // 4, 2, 2)
    return cells.permute(0, 3, 1, 4, 2, 5).reshape(batch, packed // 4, height, width)


def run_ma_demo(out: Path, seed: int = 0, *, shown_as: Path | None = None) -> list[str]:
    """Run the section, write ``out/massive_activations.png``; returns the summary lines (naming the folder
    ``shown_as``, default ``out``: a command writing through a staging folder passes its final folder)."""
    out.mkdir(parents=True, exist_ok=True)
    transformer = build_foreground_dit(seed)
    family = family_for(transformer)
    latent, truth = planted_scene(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    # Two prompts that differ in their text tokens only: the tiny model's pooled vector modulates every block so
    # strongly that a different one, not the massive activations, would carry the difference.
    text, pooled = torch.randn(1, 4, 32, generator=generator), torch.randn(1, 32, generator=generator)
    source_text, source_pooled = torch.randn(1, 4, 32, generator=generator), pooled
    noise = torch.randn(latent.shape, generator=generator)

    layer = 3
    hidden = {}
    with torch.no_grad():
        capture_blocks(transformer, family, [layer],
                       lambda: family.forward(transformer, 0.26 * noise + 0.74 * latent, 0.26, text, pooled, 3.5),
                       lambda index, tokens, temb: hidden.update(tokens=tokens.clone()))
    mask = ma_mask(hidden["tokens"], top_k=len(DEMO_MASSIVE_CHANNELS)).reshape(truth.shape)

    everywhere = range(len(family.blocks(transformer)))
    plain = sample_flow(transformer, noise, text, pooled)
    samples = {}
    for name, control in (("disrupted", False), ("control", True)):
        patch = DisruptionPatch(everywhere, Disruption(len(DEMO_MASSIVE_CHANNELS), control))
        with massive_activations(transformer, disruption=patch):
            samples[name] = sample_flow(transformer, noise, text, pooled)
    source = sample_flow(transformer, noise, source_text, source_pooled)
    swept = []
    for strength in STRENGTHS:
        patch = TransportPatch(everywhere, Transport(len(DEMO_MASSIVE_CHANNELS), strength, "none"),
                               source_embeds=source_text, source_pooled=source_pooled)
        with massive_activations(transformer, transport=patch):
            swept.append(sample_flow(transformer, noise, text, pooled))

    change = {name: float((sample - plain).norm()) for name, sample in samples.items()}
    distances = [float((sample - source).norm()) for sample in swept]
    ratio = change["disrupted"] / max(change["control"], 1e-12)
    _picture(out / "massive_activations.png", latent, truth, mask, plain, samples, swept, source)
    return [
        "  massive activations at work (tiny planted model, RANDOM weights; massive channels "
        f"{list(DEMO_MASSIVE_CHANNELS)}):",
        f"    MA mask of a planted object at block {layer}: IoU {iou(mask, truth):.2f}",
        f"    disrupting the massive channels changes the sample by {change['disrupted']:.3g}, the control by "
        f"{change['control']:.3g} ({ratio:.0f}x)",
        "    transport strength " + ", ".join(f"{s:g}" for s in STRENGTHS) + ": distance to the source sample "
        + ", ".join(f"{d:.3g}" for d in distances),
        f"    wrote {Path(shown_as or out)}/massive_activations.png",
    ]


def _picture(path: Path, latent, truth, mask, plain, samples, swept, source) -> None:
    size = (96, 96)

    def gray(cells: torch.Tensor):
        return upsample_rgb(cells.float().expand(3, *cells.shape).clamp(0.0, 1.0), size)

    shown = [upsample_rgb(rgb, size) for rgb in pca_rgb([plain[0], samples["disrupted"][0], samples["control"][0]])]
    gaps = [(sample - source)[0].norm(dim=0) for sample in swept]
    strengths = [f"{s:g}" for s in STRENGTHS]
    rows = [
        ("The MA mask finds a planted object", [("object", gray((latent[0, 0] + 1) / 2)),
                                                ("its tokens", gray(truth)), ("MA mask", gray(mask))]),
        ("Zeroing the massive channels wrecks the sample; the control barely moves it",
         list(zip(("plain", "MAs zeroed", "control"), shown))),
        ("Transport: |x - source| falls as the strength grows",
         list(zip(strengths, [gray(gap / gaps[0].max().clamp_min(1e-12)) for gap in gaps]))),
    ]
    save_image(captioned_grid(rows, title="Massive activations at work (tiny model, RANDOM weights)",
                              footer=["Object: drawn into latent channel 0. MA mask: K-means on the massive "
                                      "channels. Control: the k weakest channels zeroed. Samples: a PCA of their "
                                      "latent channels; bottom row: distance to the source sample per cell (black: "
                                      "equal)."]), path)
