"""ComfyUI IMAGE / MASK tensors <-> the engine's layouts, and the batch and size rules the correspondence nodes share.

ComfyUI: IMAGE [B, H, W, C] float in [0, 1], MASK [B, H, W] (or [H, W]) float in [0, 1]. Engine: images
[B, 3, H, W] (see ``checks.image_batch``), masks [B, H, W]. Errors name the input and the fix. No ComfyUI import
(tested without it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..ditf_core.errors import DiTFInputError

PAD_COLOUR = (255, 255, 255)  # pictures of different sizes are padded with white to one batch


def to_comfy_image(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ComfyUI IMAGE [B, H, W, 3] float32 on the CPU."""
    return pixels.detach().to("cpu", torch.float32).clamp(0.0, 1.0).movedim(1, -1).contiguous()


def pictures_to_image(pictures: Sequence[Image.Image]) -> torch.Tensor:
    """PIL pictures -> one IMAGE batch [N, H, W, 3]; smaller ones are padded (white, bottom and right) to the
    largest width and height, so each picture keeps its own scale."""
    if not pictures:
        raise ValueError("no pictures to convert")
    width = max(picture.width for picture in pictures)
    height = max(picture.height for picture in pictures)
    batch = np.empty((len(pictures), height, width, 3), dtype=np.uint8)
    for index, picture in enumerate(pictures):
        canvas = Image.new("RGB", (width, height), PAD_COLOUR)
        canvas.paste(picture.convert("RGB"), (0, 0))
        batch[index] = np.asarray(canvas)
    return torch.from_numpy(batch).float() / 255.0


def mask_batch(mask, name: str) -> torch.Tensor | None:
    """A ComfyUI MASK [B, H, W] or [H, W] (also [B, 1, H, W]) -> float32 [B, H, W] on the CPU; None stays None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a ComfyUI MASK tensor [B, H, W], got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        hint = " (that looks like an IMAGE: convert it with 'Convert Image to Mask')" if mask.ndim == 4 else ""
        raise DiTFInputError(f"{name} must be a MASK [B, H, W], got shape {list(mask.shape)}{hint}")
    if mask.numel() == 0:
        raise DiTFInputError(f"{name} is empty: shape {list(mask.shape)}")
    mask = mask.detach().to("cpu", torch.float32)
    if not torch.isfinite(mask).all():
        raise DiTFInputError(f"{name} contains NaN or infinite values; check the node that produced it")
    return mask


def check_image_size(pixels: torch.Tensor, size: tuple[int, int], name: str, expected: str) -> None:
    """``pixels`` [B, 3, H, W] must be ``size`` (W, H); ``expected`` says what that size belongs to."""
    width, height = int(size[0]), int(size[1])
    got_w, got_h = pixels.shape[-1], pixels.shape[-2]
    if (got_w, got_h) != (width, height):
        raise DiTFInputError(
            f"{name} is {got_w}x{got_h} but {expected} {width}x{height}; connect the same IMAGE that went into that "
            f"Extract DiTF Features node (or resize this one to {width}x{height} first, e.g. with 'Upscale Image')"
        )


def broadcast_batch(sizes: Mapping[str, int]) -> int:
    """The common batch size of several inputs: each holds 1 (shared by every item) or the same N; else an error
    naming them all."""
    counts = {name: int(size) for name, size in sizes.items()}
    larger = {size for size in counts.values() if size != 1}
    if len(larger) > 1:
        listed = ", ".join(f"{name} {size}" for name, size in counts.items())
        raise DiTFInputError(
            f"batch sizes do not pair up ({listed}); give each input either 1 item (used for all) or the same "
            "number of items, paired in order"
        )
    return larger.pop() if larger else 1


def pick(index: int, size: int) -> int:
    """The item of a batch of ``size`` used for item ``index`` of the broadcast batch (a batch of 1 is shared)."""
    return 0 if size == 1 else index


def check_feature_images(pixels: torch.Tensor, features, name: str = "image") -> torch.Tensor:
    """``pixels`` [B, 3, H, W] must be the images ``features`` (DiTFeatures) were extracted from: same count, same
    size. Returns ``pixels``."""
    if pixels.shape[0] != features.batch:
        raise DiTFInputError(
            f"{name} holds {pixels.shape[0]} images but the features {features.batch}; connect the IMAGE that went "
            "into the Extract DiTF Features node of these features"
        )
    check_image_size(pixels, features.mapping.image_size, name, "the features were extracted from images of")
    return pixels
