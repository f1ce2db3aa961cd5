"""Pictures of video results: a mask tinted over its frame with its outline, and tracked points with trails.

Frames are [3, H, W] floats in [0, 1]; pictures come back in the same layout (the node pack converts them).
Point colours are the correspondence pictures' (``ditf_core.matching.draw.point_colours``), so point i has one
colour everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..images import tensor_to_pil
from ..matching.draw import point_colours

MASK_COLOURS = ((1.0, 0.25, 0.25), (0.25, 0.6, 1.0), (0.3, 0.9, 0.3), (1.0, 0.8, 0.2), (0.8, 0.3, 1.0))


def overlay_labels(frame: torch.Tensor, labels: torch.Tensor, *, alpha: float = 0.45) -> torch.Tensor:
    """frame [3, H, W], labels [H, W] (0 = background) -> [3, H, W]: each object tinted, its outline drawn."""
    picture = frame.to(torch.float32).clone()
    for label in labels.unique().tolist():
        if label == 0:
            continue
        region = (labels == label).to(torch.float32)[None, None]
        colour = torch.tensor(MASK_COLOURS[(label - 1) % len(MASK_COLOURS)]).view(3, 1, 1)
        width = max(1, round(min(labels.shape) / 160))
        grown = F.max_pool2d(region, 2 * width + 1, stride=1, padding=width)
        outline = (grown - region)[0, 0] > 0
        inside = region[0, 0] > 0
        picture = torch.where(inside, (1 - alpha) * picture + alpha * colour, picture)
        picture = torch.where(outline, colour.expand_as(picture), picture)
    return picture.clamp(0.0, 1.0)


def draw_tracks(
    frame: torch.Tensor,
    history: Sequence[torch.Tensor],
    visible: torch.Tensor,
    *,
    trail: int = 8,
) -> torch.Tensor:
    """frame [3, H, W]; history: the last positions [K, 2] (oldest first, this frame's last); visible [K] ->
    [3, H, W] with a trail per point and a marker (filled: visible, hollow: occluded)."""
    image = tensor_to_pil(frame)
    draw = ImageDraw.Draw(image)
    radius = max(3, round(min(image.size) / 80))
    colours = point_colours(len(visible))
    recent = [xy.tolist() for xy in history[-trail:]]
    for k, colour in enumerate(colours):
        line = [tuple(positions[k]) for positions in recent]
        if len(line) > 1:
            draw.line(line, fill=colour, width=max(1, radius // 2))
        x, y = recent[-1][k]
        box = [x - radius, y - radius, x + radius, y + radius]
        if bool(visible[k]):
            draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=max(1, radius // 3))
        else:
            draw.ellipse(box, outline=colour, width=max(1, radius // 2))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def label_map_image(labels: torch.Tensor) -> Image.Image:
    """A label map [H, W] as an indexed PNG image in DAVIS's palette (0 black, 1 red, 2 green, ...)."""
    image = Image.fromarray(labels.to(torch.uint8).numpy())
    image.putpalette(davis_palette())  # an "L" image with a palette becomes "P"
    return image


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS annotations (the PASCAL VOC bit-interleaved colour map)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette
