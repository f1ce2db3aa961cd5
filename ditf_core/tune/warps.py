"""Known warps of the user's own images: the ground truth the layer finder scores against.

A warp is a random homography - a shift of up to ``shift`` of the image size, a rotation of up to ``rotation``
degrees and a zoom of up to ``zoom`` about the centre, then each corner moved by up to ``strength`` of the size
(perspective) - plus a photometric jitter (brightness, contrast, saturation, hue), all drawn from one seeded
generator and applied with kornia. The shift and rotation make the identity a wrong answer (features that merely
encode position score low); every pixel of the original has a known place in the warped view
(``kornia.geometry.linalg.transform_points``).
Coordinates are pixels (x, y) with pixel centres at integers, kornia's ``align_corners=True`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
from kornia.geometry.linalg import transform_points
from kornia.geometry.transform import get_perspective_transform, warp_perspective

DEFAULT_SHIFT = 0.2  # translation, as a fraction of the image side
DEFAULT_ROTATION = 20.0  # degrees
DEFAULT_ZOOM = 0.15  # scale change about the centre, as a fraction
DEFAULT_STRENGTH = 0.06  # further corner displacement (perspective), as a fraction of the image side
DEFAULT_JITTER = 0.2  # brightness / contrast / saturation change; hue changes by a quarter of it (radians / pi)


@dataclass(frozen=True)
class KnownWarps:
    """N warped views of one image.

    images: [N, 3, H, W] in [0, 1]; homographies: [N, 3, 3], original pixels (x, y) -> view pixels.
    """

    images: torch.Tensor
    homographies: torch.Tensor

    def where(self, points: torch.Tensor) -> torch.Tensor:
        """Original pixels [K, 2] -> their place in every view [N, K, 2]."""
        expanded = points[None].expand(len(self.homographies), *points.shape).to(self.homographies.dtype)
        return transform_points(self.homographies, expanded)


def make_warps(
    image: torch.Tensor,
    count: int,
    generator: torch.Generator,
    *,
    shift: float = DEFAULT_SHIFT,
    rotation: float = DEFAULT_ROTATION,
    zoom: float = DEFAULT_ZOOM,
    strength: float = DEFAULT_STRENGTH,
    jitter: float = DEFAULT_JITTER,
) -> KnownWarps:
    """``count`` random views of ``image`` [3, H, W] in [0, 1], drawn from ``generator`` (CPU)."""
    _, height, width = image.shape
    corners = torch.tensor([[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]])
    size = torch.tensor([width - 1.0, height - 1.0])
    centre = size / 2

    def uniform(*shape):
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(count) * rotation * torch.pi / 180
    scale = 1.0 + uniform(count) * zoom
    rotate = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], -2)
    moved = centre + scale[:, None, None] * (corners - centre) @ rotate.transpose(1, 2)  # [N, 4, 2]
    moved = moved + uniform(count, 1, 2) * shift * size + uniform(count, 4, 2) * strength * size
    homographies = get_perspective_transform(corners.expand(count, 4, 2), moved)
    views = warp_perspective(image[None].expand(count, -1, -1, -1), homographies, (height, width), align_corners=True)
    factors = (torch.rand(count, 4, generator=generator) * 2 - 1) * jitter
    views = adjust_brightness(views, factors[:, 0])
    views = adjust_contrast(views, 1.0 + factors[:, 1])
    views = adjust_saturation(views, 1.0 + factors[:, 2])
    views = adjust_hue(views, factors[:, 3] * torch.pi / 4)
    return KnownWarps(views.clamp(0.0, 1.0), homographies)


def grid_points(width: int, height: int, per_side: int = 8, inset: float = 0.1) -> torch.Tensor:
    """``per_side``^2 source points [K, 2] (x, y) on a regular grid, ``inset`` of the size away from the borders."""
    xs = torch.linspace(inset * (width - 1), (1 - inset) * (width - 1), per_side)
    ys = torch.linspace(inset * (height - 1), (1 - inset) * (height - 1), per_side)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def inside(points: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[..., 2] pixels -> bool [...]: within the image (points warped out of the view have no ground truth)."""
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
