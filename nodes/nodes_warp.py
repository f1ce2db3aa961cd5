"""Warp / Appearance Transfer: an IMAGE laid out like the target of a DITF_MATCH (flow, tps, homography) or the
target with the source's appearance; a mask carried along; the result VAE-encoded for a low-denoise KSampler pass."""

from __future__ import annotations

from comfy_api.latest import io
from typing_extensions import override

from ..ditf_core.errors import DiTFInputError
from .checks import check_choice, check_float, image_batch
from .images_io import mask_batch, to_comfy_image
from .types import DiTFMatchType
from .warp_ops import METHOD_HELP, METHODS, NO_VAE_MESSAGE, MissingLatent, output_is_linked, warp_with_match

LATENT_OUTPUT = 2  # index of the LATENT output (checked for links when no VAE is connected)


class WarpAppearanceTransfer(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFWarp",
            display_name="Warp / Appearance Transfer (DiTF)",
            category="DiTF",
            description="Carries a source image (or an edit of it) and an optional mask onto the target's layout by "
            "DiTF correspondence, or gives the target the source's colours; optionally VAE-encodes the result.",
            hidden=[io.Hidden.unique_id, io.Hidden.dynprompt],  # to tell whether the LATENT output is used
            inputs=[
                io.Image.Input("image", tooltip="Image to warp, at the SOURCE size: usually the source image, or an "
                               "edited version of it. One image, or one per matched pair."),
                DiTFMatchType.Input("match", tooltip="From Correspondence Match (DiTF)."),
                io.Combo.Input("method", options=list(METHODS), default="flow", tooltip="; ".join(
                    f"{method}: {METHOD_HELP[method]}" for method in METHODS) + ". tps and homography fit RANSAC to "
                    "confident matches and use only its inliers: raw mutual nearest neighbours include outliers, and "
                    "a spline passes through every control point."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05, round=0.01, tooltip="appearance: "
                               "how far each target pixel moves towards its source match's colour (x confidence); "
                               "1 = fully where matches are confident."),
                io.Float.Input("min_confidence", default=0.5, min=0.0, max=1.0, step=0.05, round=0.01,
                               tooltip="Dense matches below this cycle confidence are ignored: not used as tps / "
                               "homography control points, not blended (appearance), 0 in the masks. 1: mutual "
                               "nearest neighbours only."),
                io.Image.Input("target_image", optional=True, tooltip="The target IMAGE of the match. Required for "
                               "appearance (its structure gets the source's colours); unused otherwise."),
                io.Mask.Input("mask", optional=True, tooltip="Optional SOURCE mask (e.g. a segment) carried onto the "
                              "target layout with the same warp: mask/segment transfer A -> B."),
                io.Vae.Input("vae", optional=True, tooltip="Optional VAE (of the model you sample with next): encodes "
                             "the result into the LATENT output for a low-denoise KSampler pass."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The warped source (flow / tps / homography) or the "
                                "appearance transfer, at the target image size."),
                io.Mask.Output(display_name="mask", tooltip="The transferred mask when one is given; otherwise where "
                               "the warp is valid (flow / appearance: match confidence, 0 below min_confidence; tps / "
                               "homography: target pixels that come from inside the source)."),
                io.Latent.Output(display_name="latent", tooltip="The image output VAE-encoded with the vae input, "
                                 "ready for KSampler at low denoise (e.g. 0.3-0.6). Needs a VAE: without one, using "
                                 "this output stops with a message saying so."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, method=None, strength=None, min_confidence=None) -> bool | str:
        # ComfyUI 0.3.64 checks neither V3 combo values nor NaN; linked inputs arrive as None.
        try:
            _check_widgets(method, strength, min_confidence)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, image, match, method: str, strength: float, min_confidence: float, target_image=None, mask=None,
                vae=None) -> io.NodeOutput:
        _check_widgets(method, strength, min_confidence)
        if vae is not None and not hasattr(vae, "encode"):
            raise TypeError(f"vae must be a ComfyUI VAE (from a VAE or checkpoint loader), got {type(vae).__name__}")
        hidden = cls.hidden
        if vae is None and hidden is not None and output_is_linked(hidden.dynprompt, hidden.unique_id, LATENT_OUTPUT):
            raise DiTFInputError(NO_VAE_MESSAGE)  # before any work
        result = warp_with_match(
            match, image_batch(image), method,
            target_image=None if target_image is None else image_batch(target_image, "target_image"),
            strength=strength, min_confidence=min_confidence, mask=mask_batch(mask, "mask"),
        )
        warped = to_comfy_image(result.image)
        # An unlinked LATENT output without a VAE is fine; if a later edit links it while this result is cached, the
        # consumer stops with the same message.
        latent = {"samples": vae.encode(warped)} if vae is not None else MissingLatent(NO_VAE_MESSAGE)
        return io.NodeOutput(warped, result.mask.contiguous(), latent)


def _check_widgets(method, strength, min_confidence) -> None:
    if method is not None:
        check_choice("method", method, METHODS)
    if strength is not None:
        check_float("strength", strength, 0.0, 1.0)
    if min_confidence is not None:
        check_float("min_confidence", min_confidence, 0.0, 1.0)
