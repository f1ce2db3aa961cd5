"""VAE latent spaces: from pixels to the normalised latent a family's transformer denoises.

Three kinds of diffusers VAE cover the supported families:

* ``AutoencoderKL`` (Flux.1, SD3, Chroma, Lumina2, Z-Image, HiDream: 16 channels; PixArt, AuraFlow: 4 channels),
  normalised as ``(z - shift_factor) * scaling_factor``;
* video VAEs ``AutoencoderKLWan`` / ``AutoencoderKLQwenImage`` (Wan, Qwen-Image): they take 5-D ``[B, 3, F, H, W]``
  clips; a single image is encoded as one frame, and the latent's one frame is dropped again, so every family's
  latent is ``[B, C, h, w]``. Normalised per channel as ``(z - latents_mean) / latents_std``;
* ``AutoencoderKLFlux2`` (Flux.2): 32 channels at 1/8, patchified 2x2 into 128 channels at 1/16, then normalised
  with the VAE's own batch-norm statistics (as the Flux.2 pipeline does).

Posterior samples are drawn in the VAE's own latent space and normalised afterwards (recipe step 2).
"""

from __future__ import annotations

import torch
from torch import nn

VIDEO_VAES = ("AutoencoderKLWan", "AutoencoderKLQwenImage")
PATCHIFIED_VAES = ("AutoencoderKLFlux2",)


def check_vae(vae: object) -> nn.Module:
    """``vae`` if it is a diffusers VAE this module knows, else a ``TypeError`` naming the supported kinds."""
    config = getattr(vae, "config", None)
    if not isinstance(vae, nn.Module) or config is None or not hasattr(vae, "encode"):
        raise TypeError(
            "vae must be a diffusers AutoencoderKL (Wan / Qwen-Image: AutoencoderKLWan / AutoencoderKLQwenImage; "
            f"Flux.2: AutoencoderKLFlux2), got {type(vae).__name__}"
        )
    if getattr(config, "latent_channels", None) is None and getattr(config, "z_dim", None) is None:
        raise TypeError(f"{type(vae).__name__} is not a KL autoencoder with a latent distribution")
    return vae


def check_vae_fits(vae: object, family, transformer: nn.Module) -> nn.Module:
    """``vae`` if its normalised latents are what ``transformer`` (of ``family``) denoises: channels, pixels per
    cell and kind of latent space; else a ``ValueError`` naming the VAE the model needs. Reads only the VAE's class
    and config, so a VAE built on the meta device can be checked before any weight is read."""
    channels, factor = latent_format(check_vae(vae))
    needed = family.latent_channels(transformer)
    space = latent_space(vae)
    if (channels, factor) != (needed, family.vae_factor) or family.latent_space not in ("", space):
        wanted = LATENT_SPACES.get(family.latent_space, "its own VAE")
        raise ValueError(
            f"this {type(vae).__name__} makes {channels}-channel latents at 1/{factor} scale but this {family.label} "
            f"denoises {needed}-channel latents at 1/{family.vae_factor} from {wanted}; use the model's own VAE"
        )
    return vae


# What each family's ``latent_space`` names, for error messages.
LATENT_SPACES = {
    "kl16": "a 16-channel AutoencoderKL (Flux.1 ae / SD3 VAE)",
    "kl4": "a 4-channel AutoencoderKL (SD / SDXL VAE)",
    "wan": "a Wan-style video VAE (AutoencoderKLWan / AutoencoderKLQwenImage)",
    "flux2": "the Flux.2 VAE (AutoencoderKLFlux2)",
}


def latent_space(vae: nn.Module) -> str:
    """The kind of latent space ``vae`` makes: a key of ``LATENT_SPACES`` ("kl<channels>" for other KL VAEs)."""
    kind = type(vae).__name__
    if kind in VIDEO_VAES:
        return "wan"
    if kind in PATCHIFIED_VAES:
        return "flux2"
    return f"kl{vae.config.latent_channels}"


def latent_format(vae: nn.Module) -> tuple[int, int]:
    """(channels, pixels per cell) of the NORMALISED latents of ``vae`` (what the transformer sees)."""
    config = vae.config
    kind = type(vae).__name__
    if kind in VIDEO_VAES:
        factor = getattr(config, "scale_factor_spatial", None) or 2 ** (len(config.dim_mult) - 1)
        return int(config.z_dim), int(factor)
    factor = 2 ** (len(config.block_out_channels) - 1)
    if kind in PATCHIFIED_VAES:
        patch_h, patch_w = config.patch_size
        return int(config.latent_channels) * patch_h * patch_w, factor * patch_h
    return int(config.latent_channels), factor


@torch.no_grad()
def encode_posterior(vae: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels [B, 3, H, W] in [-1, 1] -> (mean, std) of the posterior, each [B, C, h, w] float32 on the CPU."""
    video = type(vae).__name__ in VIDEO_VAES
    posterior = vae.encode(pixels.unsqueeze(2) if video else pixels).latent_dist
    mean, std = posterior.mean.float(), posterior.std.float()
    if video:  # one frame in, one latent frame out
        mean, std = mean[:, :, 0], std[:, :, 0]
    return mean.cpu(), std.cpu()


def normalize(vae: nn.Module, samples: torch.Tensor) -> torch.Tensor:
    """Latent samples [..., C, h, w] in the VAE's space -> the transformer's normalised latents [..., C', h', w']."""
    config = vae.config
    kind = type(vae).__name__
    if kind in VIDEO_VAES:
        mean = torch.tensor(config.latents_mean, dtype=samples.dtype).view(-1, 1, 1)
        std = torch.tensor(config.latents_std, dtype=samples.dtype).view(-1, 1, 1)
        return (samples - mean) / std
    if kind in PATCHIFIED_VAES:
        patched = patchify_2x2(samples)
        bn = vae.bn
        mean = bn.running_mean.detach().to("cpu", samples.dtype).view(-1, 1, 1)
        std = torch.sqrt(bn.running_var.detach().to("cpu", samples.dtype).view(-1, 1, 1) + config.batch_norm_eps)
        return (patched - mean) / std
    return (samples - (config.shift_factor or 0.0)) * config.scaling_factor


def patchify_2x2(latents: torch.Tensor) -> torch.Tensor:
    """[..., C, h, w] -> [..., 4C, h/2, w/2] with channel order (c, row in patch, column in patch), as the Flux.2
    pipeline patchifies its VAE latents."""
    *lead, c, h, w = latents.shape
    patches = latents.reshape(-1, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(*lead, c * 4, h // 2, w // 2)
