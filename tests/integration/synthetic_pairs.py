"""Image pairs with KNOWN correspondence and features that make it findable, for deterministic Match / Warp tests.

Random-weight DiTs give features without semantics, so the correspondence tests build DITF_FEATURES directly: a
smooth "world" both images look at through different windows, and random Fourier features of world position as
the feature map. Cosine similarity of such features is a shift-invariant kernel peaking exactly at the same world
point, so the true match is the nearest neighbour. The target's window is shifted by ``SHIFT`` pixels (whole
feature cells): source pixel p shows what target pixel p - SHIFT shows.

Features are built with the ``ditf_core`` copy of the pack under test (``core``): the pack is loaded under an alias,
and its node code checks ``isinstance`` against its own classes.
"""

from __future__ import annotations

import math

import torch

SIZE = (128, 96)  # (W, H) of both images
CELL = 8  # pixels per feature cell
SHIFT = (16, 8)  # target window offset in pixels (2 x 1 cells)
CHANNELS = 64


def settings(**overrides) -> dict:
    return {"family": "flux", "layer": 3, "mode": "ditf", "t": 0.26, "resolution": 128,
            "model": {"name": "synthetic", "config_sha256": "0123456789abcdef"}, **overrides}


def world_image(offset=(0, 0), size=SIZE, invert=False) -> torch.Tensor:
    """A smooth colourful picture of the world seen from ``offset`` (pixels): [1, 3, H, W] in [0, 1]."""
    width, height = size
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32) + offset[1],
                          torch.arange(width, dtype=torch.float32) + offset[0], indexing="ij")
    red = 0.5 + 0.4 * torch.sin(x / 11.0) * torch.cos(y / 17.0)
    green = 0.5 + 0.4 * torch.sin((x + 2 * y) / 23.0)
    blue = 0.5 + 0.4 * torch.cos((x - y) / 13.0 + 1.0)
    image = torch.stack([red, green, blue])[None]
    return 1.0 - image if invert else image


def world_features(core, offset=(0, 0), size=SIZE, batch=1, seed=0, **setting_overrides):
    """Fourier features of world position on the feature grid of an image seen from ``offset`` (pixels)."""
    width, height = size
    grid_w, grid_h = width // CELL, height // CELL
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(CHANNELS // 2, 2, generator=generator) * 0.12 * 2 * math.pi  # radians per cell
    phase = torch.rand(CHANNELS // 2, 1, 1, generator=generator) * 2 * math.pi
    v, u = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32) + offset[1] / CELL,
                          torch.arange(grid_w, dtype=torch.float32) + offset[0] / CELL, indexing="ij")
    angle = omega[:, 0, None, None] * u + omega[:, 1, None, None] * v + phase
    maps = torch.cat([torch.cos(angle), torch.sin(angle)])[None].expand(batch, -1, -1, -1).contiguous()
    mapping = core.mapping.PixelMapping(size, size, (grid_w, grid_h))
    return core.features.DiTFeatures(maps, mapping, settings(**setting_overrides))


def pair(core, batch=1):
    """(source features, target features, source image, target image) for ``batch`` identical pairs; images are
    [B, 3, H, W] in [0, 1]."""
    source_image = world_image().expand(batch, -1, -1, -1).contiguous()
    target_image = world_image(SHIFT).expand(batch, -1, -1, -1).contiguous()
    return world_features(core, batch=batch), world_features(core, SHIFT, batch=batch), source_image, target_image


def comfy(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> ComfyUI IMAGE [B, H, W, 3]."""
    return pixels.movedim(1, -1).contiguous()
