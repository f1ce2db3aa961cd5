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

# One tiny config per further family (diffusers class, config): hidden size 64 (HiDream 64, Wan 64), a few blocks on
# both sides of any stream split, text width 32. Each instantiates in ~0.1 s and runs 128 px in milliseconds.
TINY_FAMILIES: dict[str, tuple[str, dict]] = {
    "flux2": ("Flux2Transformer2DModel", dict(
        patch_size=1, in_channels=128, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True)),
    "chroma": ("ChromaTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=64, approximator_hidden_dim=32,
        approximator_layers=2)),
    "qwen_image": ("QwenImageTransformer2DModel", dict(
        patch_size=2, in_channels=64, out_channels=16, num_layers=4, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6))),
    "lumina2": ("Lumina2Transformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=16, hidden_size=64, num_layers=4, num_refiner_layers=1,
        num_attention_heads=4, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(300, 64, 64),
        cap_feat_dim=32)),
    "z_image": ("ZImageTransformer2DModel", dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=4, n_refiner_layers=1, n_heads=4,
        n_kv_heads=4, cap_feat_dim=32, axes_dims=[4, 6, 6], axes_lens=[1024, 64, 64])),
    "hidream": ("HiDreamImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, out_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
        num_attention_heads=4, caption_channels=[32, 24], text_emb_dim=32, num_routed_experts=2,
        num_activated_experts=1, axes_dims_rope=(4, 6, 6), max_resolution=(32, 32), llama_layers=[0, 1, 2, 3, 2])),
    "pixart": ("PixArtTransformer2DModel", dict(
        sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=4, attention_head_dim=16,
        num_attention_heads=4, cross_attention_dim=64, caption_channels=32, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False)),
    "auraflow": ("AuraFlowTransformer2DModel", dict(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_mmdit_layers=2, num_single_dit_layers=3,
        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=64,
        pos_embed_max_size=1024)),
    "wan": ("WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=128, num_layers=4, rope_max_seq_len=64)),
}

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


def build_tiny_family(name: str, seed: int = 0, perturb: bool = True, **overrides) -> nn.Module:
    """A random-init tiny transformer of family ``name`` ("flux", "sd3", "sd35" or a key of ``TINY_FAMILIES``).

    diffusers zero-initialises some layers (AdaLN-zero gates, output projections, register tables); every weight is
    nudged with seeded noise so that all paths of the tiny model carry signal, as in a trained one (``perturb``;
    off when the caller loads its own weights next).
    """
    import diffusers

    if name in ("flux", "sd3", "sd35"):
        return build_tiny_flux(seed, **overrides) if name == "flux" else build_tiny_sd3(seed, name == "sd35", **overrides)
    if name not in TINY_FAMILIES:
        raise ValueError(f"no tiny config for family {name!r}; known: flux, sd3, sd35, {', '.join(TINY_FAMILIES)}")
    class_name, config = TINY_FAMILIES[name]
    torch.manual_seed(seed)
    model = getattr(diffusers, class_name)(**{**config, **overrides}).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters() if perturb else ():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


# Tiny VAEs of each latent space (see ditf_core.latents): 8 px per cell (Flux.2's 16 after its 2x2 patchify).
TINY_VAES = {
    "kl16": ("AutoencoderKL", TINY_VAE_CONFIG),
    "kl4": ("AutoencoderKL", dict(TINY_VAE_CONFIG, latent_channels=4, scaling_factor=0.13025, shift_factor=None)),
    "wan": ("AutoencoderKLWan", dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])),
    "qwen": ("AutoencoderKLQwenImage", dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                            temperal_downsample=[False, True, True])),
    "flux2": ("AutoencoderKLFlux2", {**{k: v for k, v in TINY_VAE_CONFIG.items() if not k.endswith("_factor")},
                                     "latent_channels": 32}),
}


def build_tiny_vae(seed: int = 0, posterior_std: float = 0.05, kind: str = "kl16") -> nn.Module:
    """A random-init tiny VAE of latent space ``kind`` (default: 16-channel ``AutoencoderKL`` with Flux's latent
    normalisation; see ``TINY_VAES``).

    Random weights give a posterior whose spread rivals its mean; ``posterior_std`` pins the log-variance half of
    the encoder output so that posterior samples stay close to the mean, as in a trained VAE.
    """
    import diffusers

    class_name, config = TINY_VAES[kind]
    torch.manual_seed(seed)
    vae = getattr(diffusers, class_name)(**config).eval()
    # The last layer before the posterior: the quant conv where there is one (video VAEs), else the encoder's output.
    conv_out = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else vae.encoder.conv_out
    half = conv_out.out_channels // 2  # (mean | log-variance) halves
    with torch.no_grad():
        conv_out.weight[half:] = 0.0
        conv_out.bias[half:] = 2.0 * torch.log(torch.tensor(posterior_std))
        if kind == "flux2":  # running batch-norm statistics of a trained VAE are not (0, 1)
            vae.bn.running_mean.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed))
            vae.bn.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(seed + 1))
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
