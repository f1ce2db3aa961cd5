"""Checks of node inputs that ComfyUI 0.3.64 leaves to the node, and the IMAGE -> pixel batch conversion.

ComfyUI checks INT/FLOAT min/max of widget values, but not V3 combo values against their options and not NaN
(``NaN < min`` is False), and linked inputs reach ``execute`` unchecked. Every function here raises a
``ValueError``/``TypeError`` whose message names the input and the fix; ``validate_inputs`` hooks turn them into
strings. Host-agnostic: no ComfyUI import, so the checks are tested without ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..ditf_core.images import as_image_batch
from ..ditf_core.pipeline import parse_channel_list

# ComfyUI's IMAGE values are floats in [0, 1]; resampling nodes may overshoot by a hair, which we clamp.
IMAGE_TOLERANCE = 1e-3
# The largest seed a browser holds exactly (JavaScript numbers), well inside torch's generator range.
MAX_SEED = 2**53 - 1


def check_choice(name: str, value, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options`` (V3 combos reach ``execute`` unchecked in ComfyUI 0.3.64)."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


def check_float(name: str, value, low: float, high: float) -> float:
    """A finite float in [low, high]; NaN and infinities are rejected by name."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return value


def check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def parse_discard(text) -> str | list[int]:
    """The discard widget: ``"auto"``, ``"none"`` or channel numbers like ``"154, 1446"``.

    Returns "auto", "none" or the list of channels (range-checked later, when the model's width is known).
    """
    if not isinstance(text, str):
        raise TypeError(f"discard must be text ('auto', 'none' or '154, 1446'), got {type(text).__name__}")
    keyword = text.strip().lower()
    if keyword in ("auto", "none", ""):
        return keyword or "none"
    channels = parse_channel_list(text)
    negative = [c for c in channels if c < 0]
    if negative:
        raise ValueError(f"discard channels must be 0 or more, got {negative}; write e.g. '154, 1446'")
    return channels


def image_batch(image, name: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] (C = 1 grey, 3 RGB or 4 RGBA) -> float32 [B, 3, H, W] in [0, 1] on the CPU.

    Grey is repeated to RGB and alpha dropped (the model sees colour only); values a hair outside [0, 1] are
    clamped, anything further out is rejected. name: the input's name, for the messages.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a ComfyUI IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim != 4:
        hint = " (that looks like a MASK: convert it with 'Convert Mask to Image')" if image.ndim == 3 else ""
        raise ValueError(f"{name} must be an IMAGE [B, H, W, C], got shape {list(image.shape)}{hint}")
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name} must have 1 (grey), 3 (RGB) or 4 (RGBA) channels in its last dimension, got {list(image.shape)}"
        )
    pixels = image.detach().to("cpu", torch.float32)
    if pixels.numel() == 0:
        raise ValueError(f"{name} is empty: shape {list(image.shape)}")
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the node that produced it")
    low, high = float(pixels.min()), float(pixels.max())
    if low < -IMAGE_TOLERANCE or high > 1.0 + IMAGE_TOLERANCE:
        raise ValueError(
            f"{name} values must lie in [0, 1] (ComfyUI's IMAGE convention), got [{low:.3g}, {high:.3g}]; "
            "normalise or clamp the image first"
        )
    return as_image_batch(pixels.clamp(0.0, 1.0).movedim(-1, 1))
