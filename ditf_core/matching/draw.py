"""Pictures of correspondences, like the paper's figures: the two images side by side, each source point and its
match in the same colour, joined by a line; and similarity heatmaps laid over an image."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw


def point_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated, saturated colours (golden-ratio hues), the same for the same index."""
    colours = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((0.1 + i * 0.618034) % 1.0, 0.85, 1.0)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def draw_matches(
    source: Image.Image,
    target: Image.Image,
    source_points: torch.Tensor,
    target_points: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    gap: int = 8,
    radius: int | None = None,
    lines: bool = True,
) -> Image.Image:
    """Source and target images side by side with K matches drawn on them.

    source_points, target_points: [K, 2] pixels (x, y) in each image. valid: [K] bool; invalid points are drawn
    hollow on the source and get no match. Markers scale with the image size.
    """
    width = source.width + gap + target.width
    canvas = Image.new("RGB", (width, max(source.height, target.height)), (255, 255, 255))
    canvas.paste(source.convert("RGB"), (0, 0))
    canvas.paste(target.convert("RGB"), (source.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    radius = radius or max(3, round(min(source.size + target.size) / 80))
    offset = source.width + gap
    valid = torch.ones(len(source_points), dtype=torch.bool) if valid is None else valid
    for (sx, sy), (tx, ty), ok, colour in zip(
        source_points.tolist(), target_points.tolist(), valid.tolist(), point_colours(len(source_points))
    ):
        if ok and lines:
            draw.line([(sx, sy), (tx + offset, ty)], fill=colour, width=max(1, radius // 3))
        _marker(draw, sx, sy, radius, colour, filled=ok)
        if ok:
            _marker(draw, tx + offset, ty, radius, colour, filled=True)
    return canvas


def heatmap_overlay(image: Image.Image, heat: torch.Tensor, *, alpha: float = 0.55) -> Image.Image:
    """A [h, w] map (any range; normalised here) drawn over ``image`` with a blue-to-red colour ramp."""
    heat = heat.detach().float().cpu()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)
    ramp = torch.stack([heat, 1.0 - (2.0 * heat - 1.0).abs(), 1.0 - heat], dim=-1)  # red, green peak, blue
    colours = Image.fromarray((ramp.numpy() * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), colours, alpha)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, radius: int, colour, *, filled: bool) -> None:
    box = [x - radius, y - radius, x + radius, y + radius]
    if filled:
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, radius // 3))
    else:
        draw.ellipse(box, outline=colour, width=max(1, radius // 2))
