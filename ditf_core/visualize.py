"""Pictures of features: PCA to RGB (one joint projection, so colours agree across images), side-by-sides and
captioned sheets of pictures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .images import tensor_to_pil

WHITE = (255, 255, 255)
CAPTION_SIZE = 15  # px: legible beside 384 px pictures
HEADING_SIZE = 16
TITLE_SIZE = 19


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


def side_by_side(images: Sequence[Image.Image], gap: int = 4, background=WHITE) -> Image.Image:
    """Images left to right on one canvas, top-aligned."""
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    height = max(image.height for image in images)
    canvas = Image.new("RGB", (width, height), background)
    x = 0
    for image in images:
        canvas.paste(image.convert("RGB"), (x, 0))
        x += image.width + gap
    return canvas


def captioned_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, Image.Image]]]],
    *,
    title: str = "",
    footer: Sequence[str] = (),
    gap: int = 10,
) -> Image.Image:
    """A sheet of pictures a newcomer can read, on white: ``title`` on top, then the rows, then ``footer`` lines
    (a legend, a note).

    rows: ``(heading, [(caption, picture), ...])``; the heading ("" for none) spans the row, each caption sits above
    its own picture. Text is wrapped to the space it has, at :data:`CAPTION_SIZE` px (headings and title larger).
    """
    strips = []
    for heading, panels in rows:
        columns = []
        for caption, picture in panels:
            label = text_block(caption, picture.width, CAPTION_SIZE)
            column = Image.new("RGB", (picture.width, label.height + picture.height), WHITE)
            column.paste(label, (0, 0))
            column.paste(picture.convert("RGB"), (0, label.height))
            columns.append(column)
        strip = side_by_side(columns, gap=gap)
        if heading:
            strip = _stack([text_block(heading, strip.width, HEADING_SIZE, bold=True), strip], gap=2)
        strips.append(strip)
    width = max(strip.width for strip in strips)
    parts = ([text_block(title, width, TITLE_SIZE, bold=True)] if title else []) + strips
    parts += [text_block(line, width, CAPTION_SIZE) for line in footer]
    sheet = _stack(parts, gap=gap)
    canvas = Image.new("RGB", (sheet.width + 2 * gap, sheet.height + 2 * gap), WHITE)
    canvas.paste(sheet, (gap, gap))
    return canvas


def text_block(text: str, width: int, size: int = CAPTION_SIZE, *, bold: bool = False) -> Image.Image:
    """``text`` wrapped to ``width`` pixels, black on white, as a picture of its own height."""
    font = caption_font(size)
    lines = wrap_text(text, font, width)
    line_height = round(size * 1.3)
    block = Image.new("RGB", (width, line_height * len(lines) + 4), WHITE)
    draw = ImageDraw.Draw(block)
    for row, line in enumerate(lines):
        position = (0, 2 + row * line_height)
        draw.text(position, line, fill=(0, 0, 0), font=font)
        if bold:  # the default font has no bold face: a second pass one pixel over thickens the strokes
            draw.text((position[0] + 1, position[1]), line, fill=(0, 0, 0), font=font)
    return block


def wrap_text(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` pixels in ``font`` (a long word gets its own
    line)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def caption_font(size: int):
    """Pillow's built-in scalable font at ``size`` px (no font file needed); the fixed small bitmap font on Pillow
    older than 10.1, which cannot scale it."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _stack(parts: Sequence[Image.Image], gap: int) -> Image.Image:
    """Pictures top to bottom, left-aligned, on white."""
    canvas = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + gap * (len(parts) - 1)),
                       WHITE)
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height + gap
    return canvas
