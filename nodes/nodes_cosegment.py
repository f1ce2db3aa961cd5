"""Co-Segment (DiTF): DITF_FEATURES of a batch -> K clusters over all images together (the same part gets the
same id in every image) -> one MASK per cluster per image and a coloured preview."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.cosegment import MAX_CLUSTERS, cosegment
from ..ditf_core.features import DiTFeatures
from . import comfy_host
from .checks import MAX_SEED, check_int, image_batch
from .images_io import check_feature_images, mask_batch, to_comfy_image
from .types import DiTFeaturesType

ITERATIONS_RANGE = (1, 1000)


class CoSegment(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFCoSegment",
            display_name="Co-Segment (DiTF)",
            category="DiTF",
            description="Groups the feature cells of a whole batch into K clusters with one K-means, so cluster j is "
            "the same part in every image: one mask per cluster per image, and a coloured preview.",
            is_output_node=True,  # shows its preview even when nothing consumes the masks yet
            inputs=[
                DiTFeaturesType.Input("features", tooltip="Features of the batch to co-segment (Extract DiTF Features, "
                                      "or Fuse DINOv2 for cleaner parts)."),
                io.Int.Input("clusters", default=4, min=2, max=MAX_CLUSTERS, tooltip="K: how many groups. Ids are "
                             "ordered by size over the batch, 0 the largest (often the background)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the k-means++ start: the same seed gives the same clusters."),
                io.Int.Input("iterations", default=100, min=ITERATIONS_RANGE[0], max=ITERATIONS_RANGE[1],
                             tooltip="Most K-means steps (it stops earlier once no cell changes cluster)."),
                io.Int.Input("cluster", default=0, min=0, max=MAX_CLUSTERS - 1, tooltip="Which cluster the "
                             "cluster_mask output holds (must be below clusters)."),
                io.Image.Input("image", optional=True, tooltip="The IMAGE the features were extracted from (same "
                               "count and size), drawn under the preview. Without it the preview shows colours only."),
                io.Mask.Input("foreground", optional=True, tooltip="Optional mask: only cells at least half inside it "
                              "are clustered; the rest belong to no cluster (one mask, or one per image)."),
            ],
            outputs=[
                io.Mask.Output(display_name="cluster_mask", tooltip="The chosen cluster's mask for every image [B, H, "
                               "W] at the image size."),
                io.Mask.Output(display_name="masks", tooltip="Every cluster's mask for every image, cluster by "
                               "cluster: cluster j of image i is mask j * B + i (K * B masks)."),
                io.Image.Output(display_name="preview", tooltip="Each image with its clusters in colour (the same "
                                "colour, the same cluster in every image); outside the foreground greyed."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, clusters=None, cluster=None) -> bool | str:
        # Linked inputs arrive as None; the cross-check of cluster < clusters is ComfyUI's blind spot.
        if clusters is not None and cluster is not None and cluster >= clusters:
            return f"cluster must be below clusters ({clusters}), got {cluster}"
        return True

    @classmethod
    @override
    def execute(cls, features, clusters: int, seed: int, iterations: int, cluster: int, image=None,
                foreground=None) -> io.NodeOutput:
        check_int("clusters", clusters, 2, MAX_CLUSTERS)
        check_int("seed", seed, 0, MAX_SEED)
        check_int("iterations", iterations, *ITERATIONS_RANGE)
        check_int("cluster", cluster, 0, clusters - 1)
        if not isinstance(features, DiTFeatures):
            raise TypeError(f"features must be DITF_FEATURES from Extract DiTF Features, got {type(features).__name__}")
        pixels = None if image is None else check_feature_images(image_batch(image), features)
        comfy_host.check_interrupted()
        result = cosegment(features, clusters, foreground=mask_batch(foreground, "foreground"), seed=seed,
                           iterations=iterations)
        masks = torch.stack([result.masks(i) for i in range(result.images)])  # [B, K, H, W]
        preview = torch.stack([result.preview(i, None if pixels is None else pixels[i]) for i in range(result.images)])
        preview = to_comfy_image(preview)
        all_masks = masks.transpose(0, 1).reshape(-1, *masks.shape[-2:]).contiguous()
        return io.NodeOutput(masks[:, cluster].contiguous(), all_masks, preview,
                             ui=ui.PreviewImage(preview, cls=cls))

