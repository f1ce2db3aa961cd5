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
