"""Helpers shared by the tests (plain module: conftest.py files are not importable by name)."""

from __future__ import annotations

import torch

TEXT_TOKENS = 8
PLANTED = (13, 41)  # channels planted after block 1 by the planted_flux fixture


def conditioning(model, batch: int = 1, seed: int = 5):
    """Random (text_embeds [batch, L, D], pooled [batch, P]) of the model's sizes."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    text = torch.randn(batch, TEXT_TOKENS, config.joint_attention_dim, generator=generator)
    pooled = torch.randn(batch, config.pooled_projection_dim, generator=generator)
    return text, pooled


def latents_and_noise(batch: int = 2, ensemble: int = 3, size: tuple[int, int] = (16, 24), seed: int = 9):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, *size, generator=generator)
    noise = torch.randn(ensemble, batch, 16, *size, generator=generator)
    return latents, noise


def family_conditioning(model, batch: int = 1, seed: int = 5):
    """Random (text_embeds, pooled) of any family's shapes: a dict of streams for HiDream, pooled None where the
    family takes none."""
    from ditf_core.families import family_for

    family = family_for(model)
    generator = torch.Generator().manual_seed(seed)
    zeros, pooled = family.zero_conditioning(model, TEXT_TOKENS)
    if isinstance(zeros, dict):
        text = {name: torch.randn(batch, *value.shape[1:], generator=generator) for name, value in zeros.items()}
    else:
        text = torch.randn(batch, *zeros.shape[1:], generator=generator)
    width = family.pooled_width(model)
    return text, None if width is None else torch.randn(batch, width, generator=generator)


def family_latents(model, batch: int = 2, ensemble: int = 2, size: tuple[int, int] = (16, 24), seed: int = 9):
    """Random clean latents [B, C, H, W] and noise [E, B, C, H, W] with the family's latent channels."""
    from ditf_core.families import family_for

    channels = family_for(model).latent_channels(model)
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *size, generator=generator),
            torch.randn(ensemble, batch, channels, *size, generator=generator))

