"""DINOv2 patch features as the fusion needs them, whichever host runs the model.

What SD-DINO (Zhang et al. 2023, github.com/Junyi42/sd-dino) fuses is the DINOv2 "token" facet of the LAST block
(ViT-B/14 block 11, L/14 block 23, g/14 block 39): the block's output tokens before the final LayerNorm, class token
dropped. It feeds DINOv2 an 840 px image (60 x 60 patches of 14 px), normalised with the ImageNet mean and std, and
interpolates the 37 x 37 position embeddings (trained at 518 px) bicubically to the patch grid.

We keep that, with one change: the image keeps its aspect ratio (long side ``resolution``, both sides rounded to 14
px; SD-DINO pads to a square), so a :class:`~ditf_core.mapping.PixelMapping` relates DINOv2 patches to original
pixels exactly as it does DiTF cells. Hosts: :mod:`ditf_core.fusion.transformers_dino` (a transformers
``Dinov2Model`` folder) and the ComfyUI pack's CLIP_VISION runner; both use :func:`preprocess` and return
:class:`DinoFeatures`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..images import resize_for_model
from ..mapping import PixelMapping

DINO_PATCH = 14
DEFAULT_DINO_RESOLUTION = 840  # SD-DINO's DINOv2 input size: 60 patches on the long side
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINOv2 releases by width (facebookresearch/dinov2): the name users know a checkpoint by.
SIZE_NAMES = {384: "ViT-S/14", 768: "ViT-B/14", 1024: "ViT-L/14", 1536: "ViT-g/14"}


@dataclass(frozen=True)
class DinoFeatures:
    """DINOv2 patch features of a batch of same-size images.

    features: [B, C, h, w] float32 on the CPU, the last block's tokens (pre final LayerNorm) without the class
    token; mapping: original pixels <-> patches (14 px of the resized input per patch); model: the host-neutral
    description of the network (:func:`describe_dinov2`), recorded in the fused features' settings.
    """

    features: torch.Tensor
    mapping: PixelMapping
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.features, torch.Tensor) or self.features.ndim != 4:
            raise ValueError("DinoFeatures.features must be a [B, C, h, w] tensor")
        grid = (self.features.shape[-1], self.features.shape[-2])
        if tuple(self.mapping.grid_size) != grid:
            raise ValueError(f"DINOv2 map is {grid[0]}x{grid[1]} patches but the mapping says {self.mapping.grid_size}")

    @property
    def batch(self) -> int:
        return self.features.shape[0]

    @property
    def resolution(self) -> int:
        """The long side of the model input in pixels."""
        return max(self.mapping.model_size)


def dino_mapping(width: int, height: int, resolution: int = DEFAULT_DINO_RESOLUTION) -> PixelMapping:
    """Original image ``width x height`` -> DINOv2 input (long side ~``resolution``, sides multiples of 14)."""
    check_dino_resolution(resolution)
    return PixelMapping.for_image(width, height, resolution, DINO_PATCH)


def check_dino_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not DINO_PATCH <= resolution <= 4096:
        raise DiTFInputError(
            f"the DINOv2 resolution must be a whole number of pixels in [{DINO_PATCH}, 4096], got {resolution!r} "
            f"(SD-DINO: {DEFAULT_DINO_RESOLUTION})"
        )
    return resolution


def preprocess(pixels: torch.Tensor, mapping: PixelMapping) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> the DINOv2 input [B, 3, 14 h, 14 w]: resized like the DiT input (bicubic,
    antialiased) and normalised with the ImageNet mean and std."""
    resized = resize_for_model(pixels.to(torch.float32), mapping.model_size)
    mean = torch.tensor(IMAGENET_MEAN, device=resized.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=resized.device).view(1, 3, 1, 1)
    return (resized - mean) / std


def interpolate_position_embeddings(position: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings [1, 1 + N, C] (class token first, N = n x n patches) -> [1, 1 + h w, C] for a ``grid`` of
    (h, w) patches: bicubic in float32, align_corners False, as DINOv2 and transformers' ``Dinov2Embeddings`` do."""
    count = position.shape[1] - 1
    side = int(round(count**0.5))
    if side * side != count:
        raise ValueError(f"position embeddings of {count} patches are not a square grid")
    height, width = grid
    patches = position[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).to(torch.float32)
    patches = F.interpolate(patches, size=(height, width), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, height * width, -1).to(position.dtype)
    return torch.cat([position[:, :1], patches], dim=1)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Block output [B, 1 + h w, C] (class token first) -> patch features [B, C, h, w] float32 on the CPU."""
    height, width = grid
    if tokens.shape[1] != 1 + height * width:
        raise ValueError(f"expected 1 + {height} x {width} tokens, got {tokens.shape[1]}")
    patches = tokens[:, 1:].to("cpu", torch.float32)
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, height, width).contiguous()


def describe_dinov2(patch_weight: torch.Tensor, class_token: torch.Tensor, depth: int) -> dict:
    """The host-neutral description recorded with fused features: name, width, depth and a digest of the patch
    embedding and class token rounded to float16 (ComfyUI keeps DINOv2 in float16, transformers in float32), so the
    same checkpoint gives the same record in either host and two checkpoints of one size differ."""
    hidden = int(patch_weight.shape[0])
    digest = hashlib.sha256()
    for tensor in (patch_weight, class_token):
        flat = tensor.detach().reshape(-1)
        flat = flat[:: max(1, flat.numel() // 4096)]
        digest.update(flat.to("cpu", torch.float16).numpy().tobytes())
    return {
        "name": f"DINOv2 {SIZE_NAMES.get(hidden, f'{hidden}-wide')}",
        "hidden_size": hidden,
        "depth": int(depth),
        "weights_sha256": digest.hexdigest()[:16],
    }
