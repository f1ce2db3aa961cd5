"""The diffusers / CLI host of DINOv2: a local transformers ``Dinov2Model`` folder (``config.json`` + safetensors).

Nothing is downloaded (``local_files_only``) and nothing is unpickled (safetensors only). transformers is an
optional dependency: ``pip install "comfyui-ditf[dino]"``. Download a DINOv2 once, on a machine with network, e.g.
``huggingface-cli download facebook/dinov2-large --include "*.json" "*.safetensors" --local-dir dinov2-large``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import DiTFInputError
from ..images import as_image_batch
from ..loading import _read_header as read_safetensors_header  # one reader of .safetensors headers
from .dino import DEFAULT_DINO_RESOLUTION, DinoFeatures, describe_dinov2, dino_mapping, preprocess, tokens_to_map

INSTALL_HINT = 'DINOv2 fusion needs the transformers package: pip install "comfyui-ditf[dino]"'


def load_dinov2(path, *, device=None, dtype=None) -> TransformersDino:
    """A :class:`TransformersDino` from a local transformers DINOv2 folder (``model_type`` "dinov2")."""
    folder = check_dinov2_folder(path)
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    return TransformersDino(model, device=device, dtype=dtype, name=folder.name)


def check_dinov2_folder(path) -> Path:
    """Everything about a DINOv2 folder that can be checked without reading its weights: a ``config.json`` of
    ``model_type`` "dinov2", ``.safetensors`` weights whose headers read, and transformers installed. Returns the
    folder (the command line runs this before it loads the DiT)."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise DiTFInputError(
            f"--dino {folder}: not a transformers model folder (no config.json); give a local folder like the one "
            "`huggingface-cli download facebook/dinov2-large --local-dir dinov2-large` writes (nothing is downloaded)"
        )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DiTFInputError(f"--dino {folder}: config.json is not a readable JSON file ({error}); download it "
                             "again") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "dinov2":
        raise DiTFInputError(
            f"--dino {folder} holds a {model_type or 'model of unknown type'}; fusion needs a DINOv2 "
            "(facebook/dinov2-small / -base / -large / -giant, model_type 'dinov2')"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise DiTFInputError(
            f"--dino {folder} has no .safetensors weights; only safetensors are loaded (pickled .bin files can run "
            "code): download the safetensors files or convert them"
        )
    for file in weights:
        read_safetensors_header(file, "DINOv2 weights")
    if importlib.util.find_spec("transformers") is None:
        raise DiTFInputError(INSTALL_HINT)
    return folder


class TransformersDino:
    """A transformers ``Dinov2Model`` that turns images into :class:`~ditf_core.fusion.dino.DinoFeatures`.

    device / dtype: None picks what :class:`~ditf_core.DiTFPipeline` would (CUDA in bf16 when available, else CPU
    float32).
    """

    def __init__(self, model: nn.Module, *, device=None, dtype=None, name: str = "") -> None:
        from ..pipeline import resolve_device_dtype

        if not all(hasattr(model, part) for part in ("embeddings", "encoder")) or not hasattr(model, "config"):
            raise TypeError(f"model must be a transformers Dinov2Model, got {type(model).__name__}")
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.name = name or type(model).__name__

    def describe(self) -> dict:
        embeddings = self.model.embeddings
        return describe_dinov2(embeddings.patch_embeddings.projection.weight, embeddings.cls_token,
                               len(self.model.encoder.layer))

    @torch.no_grad()
    def encode(self, images, *, resolution: int = DEFAULT_DINO_RESOLUTION, micro_batch: int = 4) -> DinoFeatures:
        """Images (PIL, list of same-size PIL, or [B, 3, H, W] in [0, 1]) -> their DINOv2 patch features."""
        pixels = as_image_batch(images)
        mapping = dino_mapping(pixels.shape[-1], pixels.shape[-2], resolution)
        grid = (mapping.grid_size[1], mapping.grid_size[0])
        chunks = pixels.split(max(1, micro_batch))
        maps = [tokens_to_map(self._last_block(preprocess(chunk, mapping)), grid) for chunk in chunks]
        return DinoFeatures(torch.cat(maps), mapping, self.describe())

    def _last_block(self, inputs: torch.Tensor) -> torch.Tensor:
        """The last encoder block's output tokens [B, 1 + h w, C] for a preprocessed input [B, 3, 14 h, 14 w], read by
        a forward hook (``output_hidden_states`` would keep every block's tokens: ~0.9 GB per 840 px image for g/14)."""
        captured = []
        handle = self.model.encoder.layer[-1].register_forward_hook(
            lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output)
        )
        try:
            self.model(pixel_values=inputs.to(self.device, self.dtype))
        finally:
            handle.remove()
        return captured[0]
