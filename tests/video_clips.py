"""Synthetic clips with known masks and point tracks, and an extractor whose features make the answer knowable.

A clip shows three surfaces: a static background, a square that moves by a fixed velocity per frame, and a
static vertical bar in front of the square (the occluder). Each pixel stores its surface and its coordinates ON
that surface: channel 0 = surface code, channels 1, 2 = (local x + 5) / 200, (local y + 5) / 200 (exact in
float32, and still decoded exactly from 8-bit PNGs). The square's local coordinates move with it; the background's and the bar's are world coordinates.

:class:`SurfaceExtractor` reads those pixels at each feature cell and returns, per (surface, local x, local y), a
fixed unit vector: on the square and the bar white noise (seeded), on the background a smooth field (random
Fourier features, correlation length ``smooth`` px; like real features, background a square uncovers resembles the
background around it). A cell's feature equals another's exactly when both show the same point of the same
surface; across surfaces, and between different points of the square, the cosine is ~N(0, 1/C). So a visible
point's match is exact, a hidden point has no match above ~0.4, and propagation copies labels from the same
surface point (or, for uncovered background, from nearby background).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping

SURFACES = (0.1, 0.5, 0.9)  # background, square, bar
BACKGROUND, SQUARE, BAR = range(3)


@dataclass(frozen=True)
class Clip:
    """width x height frames; the square (side ``size``) starts at ``start`` (x, y) and moves ``velocity`` px per
    frame; the bar covers columns [bar[0], bar[1]) of every row."""

    frames: int = 12
    width: int = 64
    height: int = 48
    size: int = 16
    start: tuple[int, int] = (4, 8)
    velocity: tuple[int, int] = (2, 2)
    bar: tuple[int, int] = (30, 38)

    def corner(self, t: int) -> tuple[int, int]:
        return self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t

    def surfaces(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(surface index [H, W], local x [H, W], local y [H, W]) of frame t."""
        ys, xs = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
        surface = torch.full((self.height, self.width), BACKGROUND)
        local_x, local_y = xs.clone(), ys.clone()
        cx, cy = self.corner(t)
        square = (xs >= cx) & (xs < cx + self.size) & (ys >= cy) & (ys < cy + self.size)
        surface[square] = SQUARE
        local_x[square], local_y[square] = xs[square] - cx, ys[square] - cy
        bar = (xs >= self.bar[0]) & (xs < self.bar[1])
        surface[bar] = BAR
        local_x[bar], local_y[bar] = xs[bar], ys[bar]
        return surface, local_x, local_y

    def frame(self, t: int) -> torch.Tensor:
        surface, local_x, local_y = self.surfaces(t)
        codes = torch.tensor(SURFACES)[surface]
        return torch.stack([codes, (local_x + 5) / 200.0, (local_y + 5) / 200.0]).to(torch.float32)

    def video(self) -> torch.Tensor:
        """[T, 3, H, W] in [0, 1]."""
        return torch.stack([self.frame(t) for t in range(self.frames)])

    def mask(self, t: int) -> torch.Tensor:
        """The square's visible pixels at frame t, as a label map [H, W] (1 = square)."""
        return (self.surfaces(t)[0] == SQUARE).long()

    def track(self, local: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The square's point at ``local`` (x, y): positions [T, 2] (pixels) and visible [T]."""
        xy = torch.tensor([[self.corner(t)[0] + local[0], self.corner(t)[1] + local[1]] for t in range(self.frames)])
        visible = (xy[:, 0] < self.bar[0]) | (xy[:, 0] >= self.bar[1])
        return xy.to(torch.float32), visible


class SurfaceExtractor:
    """frames [m, 3, H, W] (a :class:`Clip`'s pixels) -> DiTFeatures [m, C, H / cell, W / cell]; counts its calls."""

    def __init__(self, cell: int = 1, channels: int = 96, extent: int = 196, seed: int = 0, smooth: float = 4.0):
        generator = torch.Generator().manual_seed(seed)
        table = torch.randn(len(SURFACES), extent, extent, channels, generator=generator)
        ys, xs = torch.meshgrid(torch.arange(extent), torch.arange(extent), indexing="ij")
        omega = torch.randn(channels // 2, 2, generator=generator) / smooth
        phase = torch.rand(channels // 2, generator=generator) * 2 * torch.pi
        angle = torch.stack([xs, ys], dim=-1).to(torch.float32) @ omega.T + phase
        table[BACKGROUND] = torch.cat([angle.cos(), angle.sin()], dim=-1)
        self.table = table / table.norm(dim=-1, keepdim=True)
        self.cell, self.extent = cell, extent
        self.calls = 0
        self.frames_seen = 0

    def __call__(self, frames: torch.Tensor) -> DiTFeatures:
        self.calls += 1
        self.frames_seen += frames.shape[0]
        m, _, height, width = frames.shape
        pixels = frames[:, :, :: self.cell, :: self.cell]  # the first pixel of each cell
        surface = (pixels[:, 0] * 2.5 - 0.25).round().long().clamp(0, len(SURFACES) - 1)  # 0.1 / 0.5 / 0.9 -> 0 / 1 / 2
        local_x = (pixels[:, 1] * 200 - 5).round().long().clamp(0, self.extent - 1)
        local_y = (pixels[:, 2] * 200 - 5).round().long().clamp(0, self.extent - 1)
        features = self.table[surface, local_y, local_x].permute(0, 3, 1, 2).contiguous()
        grid = (features.shape[-1], features.shape[-2])
        mapping = PixelMapping((width, height), (grid[0] * 16, grid[1] * 16), grid)
        return DiTFeatures(features, mapping, {"synthetic": True})
