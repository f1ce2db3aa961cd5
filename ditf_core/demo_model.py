"""Tiny random-weight models built from configs, for the demo, tests and benchmarks.

Nothing here is a trained model: the demo DiT has random weights with two planted massive-activation channels
that behave like real ones (large, token-varying, gated open by AdaLN-zero), so the analysis, discard and
matching code paths can be exercised anywhere without downloading weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .families import family_for

TINY_FLUX_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)

TINY_SD3_CONFIG = dict(
    sample_size=32,
    patch_size=2,
    in_channels=16,
    num_layers=4,
    attention_head_dim=16,
    num_attention_heads=4,
    joint_attention_dim=32,
    caption_projection_dim=64,
    pooled_projection_dim=32,
    out_channels=16,
    pos_embed_max_size=128,
)
TINY_SD35_EXTRA = dict(dual_attention_layers=(0, 1), qk_norm="rms_norm")

TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=256,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# The demo DiT: channels and block where massive activations are planted (tiny Flux, hidden size 64).
DEMO_MASSIVE_CHANNELS = (13, 41)
DEMO_PLANT_BLOCK = 1


def build_tiny_flux(seed: int = 0, **overrides) -> nn.Module:
    """A random-init tiny ``FluxTransformer2DModel`` (6 blocks: 2 double + 4 single, hidden size 64)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**{**TINY_FLUX_CONFIG, **overrides}).eval()


def build_tiny_sd3(seed: int = 0, sd35: bool = False, **overrides) -> nn.Module:
    """A random-init tiny ``SD3Transformer2DModel`` (4 joint blocks, hidden size 64); SD3.5 layout if ``sd35``."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    config = {**TINY_SD3_CONFIG, **(TINY_SD35_EXTRA if sd35 else {}), **overrides}
    return SD3Transformer2DModel(**config).eval()


def build_tiny_vae(seed: int = 0, posterior_std: float = 0.05) -> nn.Module:
    """A random-init 16-channel ``AutoencoderKL`` with Flux's latent normalisation.

    Random weights give a posterior whose spread rivals its mean; ``posterior_std`` pins the log-variance half of
    the encoder output so that posterior samples stay close to the mean, as in a trained VAE.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    conv_out = vae.encoder.conv_out
    half = conv_out.out_channels // 2
    with torch.no_grad():
        conv_out.weight[half:] = 0.0
        conv_out.bias[half:] = 2.0 * torch.log(torch.tensor(posterior_std))
    return vae


def plant_massive_activations(
    transformer: nn.Module,
    block: int,
    channels: Sequence[int],
    *,
    bias: float = 1000.0,
    row_scale: float = 300.0,
) -> nn.Module:
    """Make ``channels`` massive in the residual stream from block ``block + 1`` on (in place, returns the model).

    The block's attention-branch output projection gets a large bias in those channels and its weight rows are
    scaled so the value varies from token to token; the block's AdaLN-zero gate is pinned open (zero weight
    rows, bias 1) for those channels, so every later block input carries them.
    """
    family = family_for(transformer)
    target = family.blocks(transformer)[block]
    out = family.attention_out(target)
    gate = family.adaln_linear(target)
    size = family.hidden_size(transformer)
    with torch.no_grad():
        for channel in channels:
            out.weight[channel] *= row_scale
            out.bias[channel] = bias
            gate.weight[2 * size + channel] = 0.0
            gate.bias[2 * size + channel] = 1.0
    return transformer


def build_demo_dit(seed: int = 0) -> nn.Module:
    """The demo DiT: tiny Flux with massive activations planted in channels 13 and 41 after block 1."""
    return plant_massive_activations(build_tiny_flux(seed), DEMO_PLANT_BLOCK, DEMO_MASSIVE_CHANNELS)
