"""DiTF + DINOv2 fusion (the SD-DINO recipe): DINOv2 patch features resampled onto the DiTF grid, each part
L2-normalised, an optional joint PCA of the DiT part, weighted concatenation. Host-free: the DINOv2 runs in
transformers (:func:`load_dinov2`, CLI ``--dino``) or in ComfyUI (the pack's Fuse DINOv2 node); both hand
:class:`DinoFeatures` to :func:`fuse_dino`.

    dino = load_dinov2("dinov2-large")
    fused = fuse_dino(pipeline.extract(image), dino.encode(image))
"""

from .dino import DEFAULT_DINO_RESOLUTION, DINO_PATCH, DinoFeatures, dino_mapping
from .fuse import DEFAULT_DIT_WEIGHT, fuse_dino, fuse_dino_jointly, fusion_mismatch, resample_to_grid
from .pca import PCABasis, fit_joint_pca
from .transformers_dino import TransformersDino, load_dinov2

__all__ = [
    "DEFAULT_DINO_RESOLUTION",
    "DEFAULT_DIT_WEIGHT",
    "DINO_PATCH",
    "DinoFeatures",
    "PCABasis",
    "TransformersDino",
    "dino_mapping",
    "fit_joint_pca",
    "fuse_dino",
    "fuse_dino_jointly",
    "fusion_mismatch",
    "load_dinov2",
    "resample_to_grid",
]
