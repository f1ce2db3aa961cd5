"""Shared fixtures: tiny random-init models built from configs (design §5)."""

from __future__ import annotations

import pytest
import torch
from helpers import PLANTED

from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae, plant_massive_activations
from ditf_core.samples import sample_scene


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


@pytest.fixture
def images(tmp_path):
    """Two sample scenes as image files of different sizes: a.png (120 x 80) and b.png (90 x 90)."""
    paths = []
    for name, size in (("a", (120, 80)), ("b", (90, 90))):
        paths.append(tmp_path / f"{name}.png")
        sample_scene(size=size).save(paths[-1])
    return paths
