"""Fuse DINOv2 (DiTF): DITF_FEATURES + a DINOv2 CLIP_VISION + the same IMAGE -> fused DITF_FEATURES (SD-DINO)."""

from __future__ import annotations

from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.features import DiTFeatures
from ..ditf_core.fusion import DEFAULT_DINO_RESOLUTION, DEFAULT_DIT_WEIGHT, DINO_PATCH, fuse_dino_jointly
from ..ditf_core.fusion.fuse import check_dit_weight
from . import comfy_host
from .checks import check_int, image_batch
from .dino_comfy import encode_dinov2
from .images_io import check_feature_images
from .model import preview_image
from .types import DiTFeaturesType

DINO_RESOLUTION_RANGE = (DINO_PATCH, 2048)
PCA_RANGE = (0, 1024)
MICRO_BATCH = 4  # images per DINOv2 forward pass


class FuseDINOv2(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFFuseDINOv2",
            display_name="Fuse DINOv2 (DiTF)",
            category="DiTF",
            description="DiTF + DINOv2 features (the SD-DINO recipe, the paper's dagger rows): DINOv2 patches "
            "resampled onto the DiTF grid, each part L2-normalised, weighted and concatenated. Matches like any "
            "DITF_FEATURES.",
            is_output_node=True,  # shows its PCA preview even when nothing consumes the features yet
            inputs=[
                DiTFeaturesType.Input("features", tooltip="DiTF features from Extract DiTF Features (not yet fused)."),
                io.ClipVision.Input("clip_vision", tooltip="DINOv2 large or giant from Load CLIP Vision "
                                    "(models/clip_vision). CLIP / SigLIP vision models are refused."),
                io.Image.Input("image", tooltip="The IMAGE the features were extracted from (same count and size): "
                               "DINOv2 sees the same pictures."),
                io.Float.Input("dit_weight", default=DEFAULT_DIT_WEIGHT, min=0.0, max=1.0, step=0.05, round=0.01,
                               tooltip="Weight a of the DiTF part (DINOv2 gets 1 - a), each part L2-normalised first. "
                               "SD-DINO: 0.5. 1: DiTF only, 0: DINOv2 only."),
                io.Int.Input("dino_resolution", default=DEFAULT_DINO_RESOLUTION, min=DINO_RESOLUTION_RANGE[0],
                             max=DINO_RESOLUTION_RANGE[1], step=DINO_PATCH, tooltip="Long side fed to DINOv2, both "
                             "sides rounded to 14 px (aspect kept). SD-DINO: 840 (60 patches)."),
                io.Int.Input("pca_dims", default=0, min=PCA_RANGE[0], max=PCA_RANGE[1], tooltip="0: off. Otherwise "
                             "reduce the DiTF part to this many dims with one PCA fitted over this batch (SD-DINO: "
                             "256). Features are only matchable with features of the same fit: batch both sides."),
            ],
            outputs=[
                DiTFeaturesType.Output(display_name="features", tooltip="Fused features [B, C + C_dino, h, w] on the "
                                       "DiTF grid, the fusion recorded in their settings: match them only with "
                                       "features fused the same way."),
                io.Image.Output(display_name="preview", tooltip="PCA of the fused features (one projection for the "
                                "batch) at the input image size."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, dit_weight=None, dino_resolution=None, pca_dims=None) -> bool | str:
        # ComfyUI 0.3.64 lets NaN through FLOAT inputs; linked inputs arrive as None (execute checks again).
        try:
            _check_widgets(dit_weight, dino_resolution, pca_dims)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, features, clip_vision, image, dit_weight: float, dino_resolution: int,
                pca_dims: int) -> io.NodeOutput:
        _check_widgets(dit_weight, dino_resolution, pca_dims)
        if not isinstance(features, DiTFeatures):
            raise TypeError(f"features must be DITF_FEATURES from Extract DiTF Features, got {type(features).__name__}")
        pixels = check_feature_images(image_batch(image), features)
        chunks = -(-pixels.shape[0] // MICRO_BATCH)
        dino = encode_dinov2(clip_vision, pixels, resolution=dino_resolution, micro_batch=MICRO_BATCH,
                             progress=comfy_host.progress_reporter(chunks))
        (fused,) = fuse_dino_jointly([features], [dino], dit_weight=dit_weight, pca_dims=pca_dims)
        preview = preview_image(fused)
        return io.NodeOutput(fused, preview, ui=ui.PreviewImage(preview, cls=cls))


def _check_widgets(dit_weight, dino_resolution, pca_dims) -> None:
    """Raise on a bad widget value (None: not known yet)."""
    if dit_weight is not None:
        check_dit_weight(dit_weight)
    if dino_resolution is not None:
        check_int("dino_resolution", dino_resolution, *DINO_RESOLUTION_RANGE)
    if pca_dims is not None:
        check_int("pca_dims", pca_dims, *PCA_RANGE)
