"""DiTF + DINOv2 fusion, the SD-DINO recipe (Zhang et al., "A Tale of Two Features", NeurIPS 2023).

Per feature cell of the DiTF grid:

    fused = concat( a * normalize(P(ditf)),  (1 - a) * normalize(resample(dino)) )

* ``resample``: DINOv2 patches onto the DiTF grid of the same image. Both grids stretch over the whole original
  image (:class:`~ditf_core.mapping.PixelMapping`), so a DiTF cell centre (u, v) sits at DINOv2 coordinates
  ``(u + 0.5) * w_dino / w - 0.5`` (through original pixels): bilinear resampling with ``align_corners=False``,
  antialiased when the DINOv2 grid is the finer one (840 px DINOv2 = 60 patches vs 40 DiTF cells at 640 px), so
  each cell averages the patches it covers instead of picking one.
* ``normalize``: L2 over channels, per cell, for each part separately (SD-DINO normalises both before the concat).
* ``P``: optional PCA of the DiT part, fitted jointly over the images being matched (SD-DINO: co-PCA of the SD
  features, 256 dims per SD layer by default; DINOv2 is not reduced). Off by default here: a DiTF map is one layer.
* ``a``: the DiT weight. SD-DINO writes F = (a ||F_SD||, (1 - a) ||F_DINO||) with a = 0.5; its code's default
  ``--WEIGHT`` is 1 for both parts, the same up to a global scale. Cosine similarity of fused vectors is then
  (a^2 cos_DiT + (1 - a)^2 cos_DINO) / (a^2 + (1 - a)^2): each part's cosine, weighted.

The result is an ordinary :class:`~ditf_core.DiTFeatures` on the DiTF grid with the same mapping, so matching,
warps, the explorer and evaluation take it as they are; ``settings["fusion"]`` records the recipe, the DINOv2 and
the PCA basis, and matching refuses a pair whose records differ (fused with unfused included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..mapping import PixelMapping
from .dino import DinoFeatures
from .pca import PCABasis, fit_joint_pca

DEFAULT_DIT_WEIGHT = 0.5  # SD-DINO's a: equal weight for the two L2-normalised parts
RECIPE = "sd-dino"


def fuse_dino(
    ditf: DiTFeatures, dino: DinoFeatures, *, dit_weight: float = DEFAULT_DIT_WEIGHT, pca: PCABasis | None = None
) -> DiTFeatures:
    """DiTF features [B, C, h, w] + DINOv2 features of the SAME B images -> fused features
    [B, k + C_dino, h, w] (k = C, or ``pca.dims``) on the DiTF grid, with the fusion recorded in the settings."""
    weight = check_dit_weight(dit_weight)
    if not isinstance(ditf, DiTFeatures):
        raise TypeError(f"features must be DiTFeatures, got {type(ditf).__name__}")
    if not isinstance(dino, DinoFeatures):
        raise TypeError(f"dino must be DinoFeatures (from a DINOv2 encoder), got {type(dino).__name__}")
    if "fusion" in ditf.settings:
        raise DiTFInputError("these features are already fused with DINOv2; fuse the DiTF features themselves")
    if dino.batch != ditf.batch:
        raise DiTFInputError(
            f"the DINOv2 features describe {dino.batch} images but the DiTF features {ditf.batch}; encode the same "
            "images that went into the extraction"
        )
    if tuple(dino.mapping.image_size) != tuple(ditf.mapping.image_size):
        raise DiTFInputError(
            f"the DINOv2 features come from {_size(dino.mapping)} images but the DiTF features from "
            f"{_size(ditf.mapping)} images; encode the same images that went into the extraction"
        )
    dit_part = ditf.features.to(torch.float32)
    if pca is not None:
        dit_part = pca.project(dit_part)
    dino_part = resample_to_grid(dino.features.to(dit_part.device, torch.float32), dino.mapping, ditf.mapping)
    fused = torch.cat([weight * F.normalize(dit_part, dim=1), (1.0 - weight) * F.normalize(dino_part, dim=1)], dim=1)
    record = fusion_record(weight, dit_channels=dit_part.shape[1], dino=dino, pca=pca)
    return replace(ditf, features=fused.contiguous(), settings={**ditf.settings, "fusion": record})


def fuse_dino_jointly(
    ditf: Sequence[DiTFeatures],
    dino: Sequence[DinoFeatures],
    *,
    dit_weight: float = DEFAULT_DIT_WEIGHT,
    pca_dims: int = 0,
) -> list[DiTFeatures]:
    """Fuse several feature maps (say the source and the target, of different sizes) with ONE PCA basis fitted
    jointly over all of their DiT cells (``pca_dims`` 0: no PCA), so that the results can be matched together."""
    if len(ditf) != len(dino):
        raise DiTFInputError(f"{len(ditf)} DiTF feature maps but {len(dino)} DINOv2 feature maps; give one of each")
    if isinstance(pca_dims, bool) or not isinstance(pca_dims, int) or pca_dims < 0:
        raise DiTFInputError(f"pca_dims must be a whole number >= 0 (0: no PCA), got {pca_dims!r}")
    basis = fit_joint_pca([f.features for f in ditf], pca_dims) if pca_dims else None
    return [fuse_dino(f, d, dit_weight=dit_weight, pca=basis) for f, d in zip(ditf, dino)]


def resample_to_grid(maps: torch.Tensor, source: PixelMapping, target: PixelMapping) -> torch.Tensor:
    """Feature maps [B, C, h_s, w_s] on ``source``'s grid -> [B, C, h_t, w_t] on ``target``'s grid of the same
    image (see the module docstring for why this is bilinear with align_corners False, antialiased)."""
    if tuple(source.image_size) != tuple(target.image_size):
        raise DiTFInputError(f"cannot resample between grids of different images ({_size(source)} vs {_size(target)})")
    width, height = target.grid_size
    if tuple(source.grid_size) == (width, height):
        return maps
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def fusion_record(weight: float, *, dit_channels: int, dino: DinoFeatures, pca: PCABasis | None) -> dict:
    """What ``settings["fusion"]`` holds: everything that changes the fused space (matching compares it whole)."""
    return {
        "recipe": RECIPE,
        "dit_weight": weight,
        "dino_weight": 1.0 - weight,
        "dit_channels": int(dit_channels),
        "dino_channels": int(dino.features.shape[1]),
        "dino": dict(dino.model),
        "dino_resolution": int(dino.resolution),
        "pca": None if pca is None else {"dims": pca.dims, "basis_sha256": pca.digest},
    }


def fusion_mismatch(first: dict | None, second: dict | None, names: tuple[str, str] = ("source", "target")) -> str:
    """Why two feature maps' fusion records (``settings.get("fusion")``) do not share a space, or "" when they do."""
    if first == second:
        return ""
    if first is None or second is None:
        fused, plain = (names[1], names[0]) if first is None else names
        record = second if first is None else first
        return (
            f"{fused} is fused with {record.get('dino', {}).get('name', 'DINOv2')} (dit_weight "
            f"{record.get('dit_weight')}) but {plain} is not: fused and plain DiTF features do not share a space; "
            f"fuse {plain} the same way too (Fuse DINOv2 / --dino), or use neither fused"
        )
    differing = sorted(key for key in {*first, *second} if first.get(key) != second.get(key))
    details = "; ".join(f"{key} {_short(first.get(key))} vs {_short(second.get(key))}" for key in differing)
    return (
        f"{names[0]} and {names[1]} were fused differently ({details}); fuse both with the same DINOv2, dit_weight "
        "and DINOv2 resolution, and fit any PCA jointly over both (one Fuse DINOv2 batch, or one CLI call)"
    )


def check_dit_weight(value) -> float:
    """The DiT part's weight a in [0, 1] (DINOv2 gets 1 - a); NaN and other types are refused by name."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DiTFInputError(f"dit_weight must be a number in [0, 1], got {type(value).__name__}")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise DiTFInputError(
            f"dit_weight must be a number in [0, 1] (DINOv2 gets 1 - dit_weight; SD-DINO: {DEFAULT_DIT_WEIGHT}), "
            f"got {value!r}"
        )
    return float(value)


def _short(value) -> str:
    """A record value for a message: DINOv2 by name and weights digest, a PCA by dims and basis digest."""
    if isinstance(value, dict) and "name" in value:
        return f"{value['name']} (weights {value.get('weights_sha256')})"
    if isinstance(value, dict) and "basis_sha256" in value:
        return f"{value.get('dims')} dims (basis {value['basis_sha256']})"
    return repr(value)


def _size(mapping: PixelMapping) -> str:
    return f"{mapping.image_size[0]}x{mapping.image_size[1]}"
