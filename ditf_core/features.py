"""``DiTFeatures``: a feature map with the settings that made it and its pixel <-> feature mapping.

Saved as safetensors (tensor ``features``) with the metadata as JSON under the ``ditf`` key: nothing is ever
unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .mapping import PixelMapping
from .outputs import atomic_path

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DiTFeatures:
    """features: [B, C, h, w] float32. settings: how they were extracted (family, layer, t, ensemble, seed,
    resolution, mode, prompt, guidance, model fingerprint). discarded: channels zeroed before LayerNorm.
    mapping: ORIGINAL pixel <-> feature cell mapping shared by the B images (all of one size)."""

    features: torch.Tensor
    mapping: PixelMapping
    settings: dict = field(default_factory=dict)
    discarded: tuple[int, ...] = ()

    def __post_init__(self):
        if not isinstance(self.features, torch.Tensor) or self.features.ndim != 4:
            raise ValueError("DiTFeatures.features must be a [B, C, h, w] tensor")
        grid = (self.features.shape[-1], self.features.shape[-2])
        if tuple(self.mapping.grid_size) != grid:
            raise ValueError(f"feature map is {grid[0]}x{grid[1]} cells but the mapping says {self.mapping.grid_size}")

    @property
    def batch(self) -> int:
        return self.features.shape[0]

    @property
    def channels(self) -> int:
        return self.features.shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) feature cells."""
        return self.features.shape[-2], self.features.shape[-1]

    def to(self, device: torch.device | str) -> DiTFeatures:
        return replace(self, features=self.features.to(device))

    def select(self, index: int) -> DiTFeatures:
        """The features of image ``index`` as a batch of one."""
        if not -self.batch <= index < self.batch:
            raise IndexError(f"image index {index} out of range for a batch of {self.batch}")
        return replace(self, features=self.features[index : index + 1])

    def metadata(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "mapping": self.mapping.to_dict(),
            "settings": self.settings,
            "discarded": list(self.discarded),
        }

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file atomically (a reader never sees half of it; see :mod:`ditf_core.outputs`)."""
        from safetensors.torch import save_file

        tensor = self.features.detach().to("cpu", torch.float32).contiguous()
        with atomic_path(path) as temporary:
            metadata = {"ditf": json.dumps(self.metadata(), sort_keys=True)}
            save_file({"features": tensor}, str(temporary), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> DiTFeatures:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature file at {path}; write one with `python -m ditf_core extract`")
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if "ditf" not in meta or "features" not in handle.keys():
                raise ValueError(f"{path} is not a DiTF feature file (no 'ditf' metadata / 'features' tensor)")
            features = handle.get_tensor("features")
        data = json.loads(meta["ditf"])
        return cls(
            features=features,
            mapping=PixelMapping.from_dict(data["mapping"]),
            settings=data.get("settings", {}),
            discarded=tuple(data.get("discarded", ())),
        )
