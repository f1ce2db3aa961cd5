"""The reversible mapping between ORIGINAL image pixels and feature-map cells.

Conventions (those of the paper's evaluation, which upsamples features bilinearly with align_corners=False and
reads them at integer keypoints):

* pixel coordinates (x, y) are continuous, with the centre of pixel column i at x = i;
* feature coordinates (u, v) are continuous, with the centre of feature cell j at u = j;
* the feature grid covers the whole image (the resize stretches, it never crops or pads), so
  ``u = (x + 0.5) * w / W - 0.5`` where W is the original width and w the number of feature columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def plan_resize(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """Model input size (width, height): long side ~ ``resolution``, both sides rounded to ``multiple``."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < multiple:
        raise ValueError(f"resolution must be an integer of at least {multiple} pixels, got {resolution!r}")
    scale = resolution / max(width, height)
    return (
        max(multiple, int(round(width * scale / multiple)) * multiple),
        max(multiple, int(round(height * scale / multiple)) * multiple),
    )


@dataclass(frozen=True)
class PixelMapping:
    """Sizes as (width, height): the original image, the resized model input, and the feature grid."""

    image_size: tuple[int, int]
    model_size: tuple[int, int]
    grid_size: tuple[int, int]

    @classmethod
    def for_image(cls, width: int, height: int, resolution: int, stride: int) -> PixelMapping:
        """The mapping for an image of ``width x height`` resized per the recipe; ``stride`` px per cell."""
        model_w, model_h = plan_resize(width, height, resolution, stride)
        return cls((width, height), (model_w, model_h), (model_w // stride, model_h // stride))

    @property
    def cell_size(self) -> tuple[float, float]:
        """Original-image pixels per feature cell, (x, y)."""
        return self.image_size[0] / self.grid_size[0], self.image_size[1] / self.grid_size[1]

    def to_feature(self, xy: torch.Tensor) -> torch.Tensor:
        """Original pixel coordinates [..., 2] (x, y) -> feature coordinates [..., 2] (u, v)."""
        return (xy.to(torch.float32) + 0.5) / self._ratio(xy) - 0.5

    def to_pixel(self, uv: torch.Tensor) -> torch.Tensor:
        """Feature coordinates [..., 2] (u, v) -> original pixel coordinates [..., 2] (x, y)."""
        return (uv.to(torch.float32) + 0.5) * self._ratio(uv) - 0.5

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> PixelMapping:
        return cls(*(tuple(int(x) for x in data[k]) for k in ("image_size", "model_size", "grid_size")))

    def _ratio(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.cell_size, dtype=torch.float32, device=like.device)
