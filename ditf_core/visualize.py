"""Pictures of features: PCA to RGB (one joint projection, so colours agree across images) and side-by-sides."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .images import tensor_to_pil


def pca_rgb(maps: Sequence[torch.Tensor], *, low: float = 0.01, high: float = 0.99) -> list[torch.Tensor]:
    """Feature maps, each [C, h, w] (sizes may differ) -> RGB maps [3, h, w] in [0, 1].

    One PCA over all cells of all maps, so the same colour means a similar feature in every image. Component
    signs are fixed (largest loading positive) and each channel is stretched between its ``low``/``high``
    quantiles, so the result is deterministic and robust to outliers.
    """
    if not maps:
        raise ValueError("no feature maps given")
    channels = {m.shape[0] for m in maps}
    if len(channels) != 1 or any(m.ndim != 3 for m in maps):
        raise ValueError("feature maps must all be [C, h, w] with the same C")
    cells = torch.cat([m.detach().float().cpu().flatten(1).T for m in maps])  # [sum(h*w), C]
    cells = cells - cells.mean(dim=0)
    if cells.shape[1] > 64 and cells.numel() > 2_000_000:
        # Wide maps (Flux: 3072 channels): a full SVD takes seconds; the top components live in a small subspace.
        cells = cells @ principal_subspace(cells, 16)
    _, _, vh = torch.linalg.svd(cells, full_matrices=False)
    components = vh[:3]
    components = components * torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    projected = cells @ components.T  # [cells, k]
    if projected.shape[1] < 3:  # fewer than 3 channels: pad with zeros
        projected = F.pad(projected, (0, 3 - projected.shape[1]))
    lo = torch.quantile(projected, low, dim=0)
    hi = torch.quantile(projected, high, dim=0)
    rgb = ((projected - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    out, start = [], 0
    for m in maps:
        n = m.shape[1] * m.shape[2]
        out.append(rgb[start : start + n].T.reshape(3, m.shape[1], m.shape[2]))
        start += n
    return out


def principal_subspace(cells: torch.Tensor, rank: int, iterations: int = 4) -> torch.Tensor:
    """[C, rank] orthonormal basis spanning the top principal directions of centred cells [M, C] (randomised
    subspace iteration from a fixed seed, Halko et al. 2011: deterministic)."""
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(cells.shape[1], rank, generator=generator)
    for _ in range(iterations):
        basis, _ = torch.linalg.qr(cells.T @ (cells @ basis))
    return basis


def upsample_rgb(rgb: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """An RGB map [3, h, w] shown at ``size`` (width, height) with visible cells (nearest neighbour)."""
    image = F.interpolate(rgb[None], size=(size[1], size[0]), mode="nearest")[0]
    return tensor_to_pil(image)


def side_by_side(images: Sequence[Image.Image], gap: int = 4, background=(255, 255, 255)) -> Image.Image:
    """Images left to right on one canvas, top-aligned."""
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    height = max(image.height for image in images)
    canvas = Image.new("RGB", (width, height), background)
    x = 0
    for image in images:
        canvas.paste(image.convert("RGB"), (x, 0))
        x += image.width + gap
    return canvas


def labelled_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], gap: int = 6, label_height: int = 16) -> Image.Image:
    """Rows of images, each row under a one-line label, on a white canvas."""
    strips = []
    for label, images in rows:
        strip = side_by_side(images, gap=gap)
        canvas = Image.new("RGB", (strip.width, strip.height + label_height), (255, 255, 255))
        ImageDraw.Draw(canvas).text((2, 2), label, fill=(0, 0, 0))
        canvas.paste(strip, (0, label_height))
        strips.append(canvas)
    width = max(strip.width for strip in strips)
    grid = Image.new("RGB", (width, sum(strip.height for strip in strips) + gap * (len(strips) - 1)), (255, 255, 255))
    y = 0
    for strip in strips:
        grid.paste(strip, (0, y))
        y += strip.height + gap
    return grid
