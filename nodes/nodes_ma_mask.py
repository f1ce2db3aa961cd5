"""Massive-Activation Mask: DITF_MODEL + IMAGE -> the K-means foreground mask of the massive activations at a block
(one early-exit pass per noise draw, as in Extract DiTF Features) and a preview."""

from __future__ import annotations

from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.transport.mask import mask_image, mask_overlay
from ..ditf_core.transport.ops import check_top_k
from ..ditf_core.transport.settings import DEFAULT_TOP_K
from . import comfy_host
from .checks import check_int, image_batch
from .model import DiTFModel
from .nodes_ma_patch import CATEGORY, LAYER_RANGE, TOP_K_RANGE
from .types import DiTFModelType
from .widgets import check_sampling, sampling_inputs, text_inputs


class MassiveActivationMask(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFMassiveActivationMask",
            display_name="Massive-Activation Mask (DiTF)",
            category=CATEGORY,
            description="Foreground mask from massive activations: the image tokens at a block, restricted to its "
            "top-k massive channels, split in two by K-means; foreground is the cluster with the larger values.",
            is_output_node=True,  # shows its preview on the node
            inputs=[
                DiTFModelType.Input("ditf_model", tooltip="From Load DiT (DiTF) or Load DiT from diffusers folder."),
                io.Image.Input("image", tooltip="Images to mask (one batch, any size; grey and RGBA become RGB)."),
                io.Int.Input("layer", default=-1, min=LAYER_RANGE[0], max=LAYER_RANGE[1], tooltip="Global block "
                             "whose input is read (Flux: 0-18 double, 19-56 single blocks). -1: the family default."),
                io.Int.Input("top_k", default=DEFAULT_TOP_K, min=TOP_K_RANGE[0], max=TOP_K_RANGE[1],
                             tooltip="Massive channels the tokens are clustered on: the top-k by |mean over tokens|."),
                *sampling_inputs("mask"),
                *text_inputs(),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="The foreground mask [B, H, W] at the input image size "
                               "(1: foreground), in feature cells of 16 px of the resized image."),
                io.Image.Output(display_name="preview", tooltip="The images with the background dimmed."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, t=None) -> bool | str:
        try:
            check_sampling(t=t)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, ditf_model: DiTFModel, image, layer: int, top_k: int, t: float, ensemble: int, seed: int,
                resolution: int, conditioning=None, prompt: str = "") -> io.NodeOutput:
        if not isinstance(ditf_model, DiTFModel):
            raise TypeError(f"ditf_model must come from a Load DiT (DiTF) node, got {type(ditf_model).__name__}")
        check_int("layer", layer, *LAYER_RANGE)
        check_top_k(top_k, ditf_model.host.hidden_size)
        check_sampling(t=t, ensemble=ensemble, seed=seed, resolution=resolution)
        pixels = image_batch(image)
        run = ditf_model.capture(pixels, layers=[layer], t=t, ensemble=ensemble, resolution=resolution, seed=seed,
                                 prompt=prompt or "", conditioning=conditioning,
                                 progress=comfy_host.progress_reporter(ensemble))
        captured = next(iter(run.layers.values()))
        mask = mask_image(captured.hidden, captured.grid, tuple(pixels.shape[-2:]), top_k=top_k)
        preview = mask_overlay(pixels, mask).permute(0, 2, 3, 1).contiguous()
        return io.NodeOutput(mask, preview, ui=ui.PreviewImage(preview, cls=cls))
