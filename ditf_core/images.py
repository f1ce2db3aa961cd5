"""Turning what users pass as images into one float batch [B, 3, H, W] in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def as_image_batch(images) -> torch.Tensor:
    """A PIL image, a list of same-size PIL images, or a tensor [B, C, H, W] / [C, H, W] in [0, 1] with
    C in {1, 3, 4} -> float32 [B, 3, H, W] on the CPU. Grayscale is repeated to RGB; alpha is dropped."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor):
        return _check_tensor(images)
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not images:
            raise ValueError("no images given: pass at least one image")
        if not all(isinstance(image, Image.Image) for image in images):
            kinds = sorted({type(image).__name__ for image in images})
            raise TypeError(f"images must be PIL images or one tensor [B, 3, H, W]; got {', '.join(kinds)}")
        sizes = sorted({image.size for image in images})
        if len(sizes) > 1:
            raise ValueError(
                f"images in one batch must share a size, got {', '.join(f'{w}x{h}' for w, h in sizes)}; "
                "extract them one at a time (or resize them to one size first)"
            )
        return torch.stack([pil_to_tensor(image) for image in images])
    raise TypeError(f"images must be a PIL image, a list of them or a tensor, got {type(images).__name__}")


def resize_for_model(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> [B, 3, height, width] in [0, 1] for ``size`` = (width, height).

    Bicubic with antialiasing (like PIL's resize), clamped back into [0, 1]. Every host resizes with this.
    """
    width, height = size
    resized = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any PIL mode -> float32 [3, H, W] in [0, 1] (alpha dropped, grayscale repeated)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """float [3, H, W] in [0, 1] -> an RGB PIL image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def _check_tensor(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"image tensor must be [B, C, H, W] or [C, H, W] with C = 1, 3 or 4, got {list(images.shape)}"
        )
    if images.shape[0] == 0 or images.shape[-1] == 0 or images.shape[-2] == 0:
        raise ValueError(f"image tensor is empty: {list(images.shape)}")
    images = images.detach().to("cpu", torch.float32)
    if not torch.isfinite(images).all():
        raise ValueError("image tensor contains NaN or infinite values")
    if images.min() < -1e-3 or images.max() > 1.0 + 1e-3:
        raise ValueError(
            f"image values must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]; divide 8-bit images by 255"
        )
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images[:, :3].clamp(0.0, 1.0).contiguous()
