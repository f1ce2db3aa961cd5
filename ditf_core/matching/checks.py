"""Input validation shared by sparse and dense matching: feature pairs and masks.

Errors name the input and the fix. Feature pairs must come from the same model, block and mode: cosine
similarity between two different feature spaces is meaningless yet would still return an answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..fusion.fuse import fusion_mismatch

# Settings whose values must agree between the two feature maps of a pair (when both record them).
SETTINGS_THAT_MUST_MATCH = ("family", "layer", "mode")


def check_features(features, name: str) -> DiTFeatures:
    """``features`` must be a :class:`DiTFeatures` (it carries the pixel <-> feature mapping)."""
    if not isinstance(features, DiTFeatures):
        raise TypeError(
            f"{name} must be DiTFeatures (features plus their pixel mapping), got {type(features).__name__}; "
            "wrap a raw [B, C, h, w] tensor as DiTFeatures(tensor, PixelMapping(image_size, model_size, grid_size))"
        )
    if not features.features.is_floating_point():
        raise TypeError(f"{name}.features must be a float tensor, got {features.features.dtype}")
    if features.features.numel() == 0:
        raise DiTFInputError(f"{name}.features is empty (shape {list(features.features.shape)})")
    # A sum is cheap and finite exactly when every element is (barring overflow, which the full check settles).
    if not torch.isfinite(features.features.sum()) and not torch.isfinite(features.features).all():
        raise DiTFInputError(
            f"{name}.features contain NaN or infinite values; re-extract them (in float32 if the model ran in "
            "float16 and overflowed)"
        )
    return features


def check_pair(source, target) -> tuple[DiTFeatures, DiTFeatures]:
    """Both maps valid, same batch size and channel count, and extracted the same way."""
    source, target = check_features(source, "source"), check_features(target, "target")
    if source.batch != target.batch:
        raise DiTFInputError(
            f"source holds {source.batch} images but target holds {target.batch}; match pairs one to one "
            "(use .select(i) to pick single images)"
        )
    mismatch = fusion_mismatch(source.settings.get("fusion"), target.settings.get("fusion"))
    if mismatch:  # before the channel count: fused and plain maps differ in width, and this says why
        raise DiTFInputError(mismatch)
    if source.channels != target.channels:
        raise DiTFInputError(
            f"source has {source.channels} channels but target has {target.channels}: they come from different "
            "models or blocks; extract both with the same model and layer"
        )
    for key in SETTINGS_THAT_MUST_MATCH:
        a, b = source.settings.get(key), target.settings.get(key)
        if a is not None and b is not None and a != b:
            raise DiTFInputError(
                f"source was extracted with {key}={a!r} but target with {key}={b!r}; features from different "
                f"{key}s do not share a space, extract both with the same {key}"
            )
    a, b = _model_hash(source), _model_hash(target)
    if a is not None and b is not None and a != b:
        raise DiTFInputError(
            f"source and target come from different models (config_sha256 {a} vs {b}); extract both images "
            "with the same model"
        )
    return source, target


def check_refinement(window, temperature) -> None:
    """The soft-argmax refinement settings: an odd window of cells and a temperature >= 0."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise DiTFInputError(f"window must be an odd number of cells >= 1 (1 turns refinement off), got {window!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise DiTFInputError(f"temperature must be a number >= 0 (0 turns refinement off), got {temperature!r}")


def grid_mask(mask, features: DiTFeatures, name: str) -> torch.Tensor | None:
    """A mask at image or grid size -> bool [B, h, w] of feature cells it allows, or None.

    A cell is allowed when at least half of its pixels are (adaptive average pooling of the pixel mask).
    """
    if mask is None:
        return None
    mask = _as_mask(mask, features, name)
    h, w = features.grid
    if mask.shape[-2:] != (h, w):
        mask = F.adaptive_avg_pool2d(mask.unsqueeze(1), (h, w)).squeeze(1)
    allowed = mask >= 0.5
    _check_not_empty(allowed, name, "feature cell")
    return allowed


def pixel_mask(mask, features: DiTFeatures, name: str) -> torch.Tensor | None:
    """A mask at image or grid size -> bool [B, H, W] of allowed ORIGINAL image pixels, or None."""
    if mask is None:
        return None
    mask = _as_mask(mask, features, name)
    width, height = features.mapping.image_size
    if mask.shape[-2:] != (height, width):
        # a grid-size mask: each pixel takes the value of the cell its centre falls in
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="nearest").squeeze(1)
    allowed = mask >= 0.5
    _check_not_empty(allowed, name, "pixel")
    return allowed


def _as_mask(mask, features: DiTFeatures, name: str) -> torch.Tensor:
    """[H, W], [B, H, W] or [B, 1, H, W], bool or values in [0, 1] -> float [B, H, W] (B = features.batch)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor [H, W], [B, H, W] or [B, 1, H, W], got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise DiTFInputError(f"{name} must be [H, W], [B, H, W] or [B, 1, H, W], got shape {list(mask.shape)}")
    width, height = features.mapping.image_size
    h, w = features.grid
    if tuple(mask.shape[-2:]) not in ((height, width), (h, w)):
        raise DiTFInputError(
            f"{name} is {mask.shape[-1]}x{mask.shape[-2]} but must match its image ({width}x{height}) or its "
            f"feature grid ({w}x{h}); resize the mask to the image it belongs to"
        )
    if mask.shape[0] not in (1, features.batch):
        raise DiTFInputError(
            f"{name} holds {mask.shape[0]} masks for {features.batch} images; pass one mask or one per image"
        )
    mask = mask.detach().to("cpu", torch.float32)
    if not torch.isfinite(mask).all():
        raise DiTFInputError(f"{name} contains NaN or infinite values")
    return mask.expand(features.batch, -1, -1)


def _check_not_empty(allowed: torch.Tensor, name: str, unit: str) -> None:
    empty = ~allowed.flatten(1).any(dim=1)
    if empty.any():
        raise DiTFInputError(
            f"{name} allows no {unit} for image {int(empty.nonzero()[0])}; use a mask that covers part of the "
            "image (values >= 0.5 are allowed) or pass None"
        )


def _model_hash(features: DiTFeatures):
    model = features.settings.get("model")
    return model.get("config_sha256") if isinstance(model, dict) else None
