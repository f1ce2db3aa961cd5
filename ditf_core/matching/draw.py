"""Pictures of correspondences, like the paper's figures: the two images side by side, each source point and its
match in the same colour, joined by a line; and similarity heatmaps laid over an image."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw

CORRECT = (30, 190, 60)  # green ring: the match is within the PCK threshold of the truth
WRONG = (230, 30, 30)  # red ring (and a red line to the truth): it is not


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
    expected: torch.Tensor | None = None,
    correct: torch.Tensor | None = None,
    gap: int = 8,
    radius: int | None = None,
    lines: bool = True,
) -> Image.Image:
    """Source and target images side by side with K matches drawn on them.

    source_points, target_points: [K, 2] pixels (x, y) in each image. valid: [K] bool; invalid points are drawn
    hollow on the source and get no match. expected: [K, 2] true target pixels, when known, drawn as a cross in
    the point's colour. correct: [K] bool, rings each match green (correct) or red (incorrect, with a red line to
    its true position when ``expected`` is given). Markers scale with the image size.
    """
    width = source.width + gap + target.width
    canvas = Image.new("RGB", (width, max(source.height, target.height)), (255, 255, 255))
    canvas.paste(source.convert("RGB"), (0, 0))
    canvas.paste(target.convert("RGB"), (source.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    radius = radius or max(3, round(min(source.size + target.size) / 80))
    offset = source.width + gap
    valid = torch.ones(len(source_points), dtype=torch.bool) if valid is None else valid
    colours = point_colours(len(source_points))
    for k, ((sx, sy), (tx, ty), ok) in enumerate(zip(source_points.tolist(), target_points.tolist(), valid.tolist())):
        if ok and lines:
            draw.line([(sx, sy), (tx + offset, ty)], fill=colours[k], width=max(1, radius // 3))
        _marker(draw, sx, sy, radius, colours[k], filled=ok)
    for k, ((tx, ty), ok) in enumerate(zip(target_points.tolist(), valid.tolist())):
        if not ok:
            continue
        if expected is not None:
            ex, ey = expected[k].tolist()
            if correct is not None and not bool(correct[k]):
                draw.line([(tx + offset, ty), (ex + offset, ey)], fill=WRONG, width=max(1, radius // 3))
            _cross(draw, ex + offset, ey, radius, colours[k])
        ring = None if correct is None else CORRECT if bool(correct[k]) else WRONG
        _marker(draw, tx + offset, ty, radius, colours[k], filled=True, ring=ring)
    return canvas


def heatmap_overlay(image: Image.Image, heat: torch.Tensor, *, alpha: float = 0.55) -> Image.Image:
    """A [h, w] map (any range; normalised here) drawn over ``image`` with a blue-to-red colour ramp."""
    heat = heat.detach().float().cpu()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)
    ramp = torch.stack([heat, 1.0 - (2.0 * heat - 1.0).abs(), 1.0 - heat], dim=-1)  # red, green peak, blue
    colours = Image.fromarray((ramp.numpy() * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.blend(image.convert("RGB"), colours, alpha)


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, radius: int, colour, *, filled: bool,
            ring=None) -> None:
    box = [x - radius, y - radius, x + radius, y + radius]
    if ring is not None:  # a thick ring outside the dot: the verdict, readable whatever the point's colour
        wide = radius + max(2, radius // 2)
        draw.ellipse([x - wide, y - wide, x + wide, y + wide], outline=ring, width=max(2, radius // 2))
    if filled:
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, radius // 3))
    else:
        draw.ellipse(box, outline=colour, width=max(1, radius // 2))


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, radius: int, colour) -> None:
    """A '+' in ``colour`` with a black outline, ``radius`` px from its centre to each tip."""
    arm = radius + 2
    for width, fill in ((max(3, radius // 2 + 2), (0, 0, 0)), (max(1, radius // 2), colour)):
        draw.line([(x - arm, y), (x + arm, y)], fill=fill, width=width)
        draw.line([(x, y - arm), (x, y + arm)], fill=fill, width=width)
