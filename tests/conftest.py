"""Shared fixtures: tiny random-init models built from configs (design §5), and conditioning for them."""

from __future__ import annotations

import pytest
import torch

from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae, plant_massive_activations

TEXT_TOKENS = 8
PLANTED = (13, 41)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(1234)


@pytest.fixture
def tiny_flux():
    return build_tiny_flux(seed=0)


@pytest.fixture
def tiny_sd3():
    return build_tiny_sd3(seed=0)


@pytest.fixture
def tiny_sd35():
    return build_tiny_sd3(seed=0, sd35=True)


@pytest.fixture
def planted_flux():
    """Tiny Flux with massive activations planted in channels 13 and 41 after block 1."""
    return plant_massive_activations(build_tiny_flux(seed=0), 1, PLANTED)


@pytest.fixture
def tiny_vae():
    return build_tiny_vae(seed=0)


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
