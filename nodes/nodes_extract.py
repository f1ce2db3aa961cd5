"""Extract DiTF Features: DITF_MODEL + IMAGE batch -> DITF_FEATURES and a PCA preview."""

from __future__ import annotations

from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.pipeline import MODE_HELP, MODES
from . import comfy_host
from .checks import check_choice, check_int, image_batch, parse_discard
from .model import DiTFModel, preview_image
from .types import DiTFeaturesType, DiTFModelType
from .widgets import check_sampling, sampling_inputs, text_inputs

LAYER_RANGE = (-1, 255)


class ExtractFeatures(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFExtractFeatures",
            display_name="Extract DiTF Features",
            category="DiTF",
            description="DiTF features of an image batch: the hidden state entering block k, averaged over noise "
            "draws, massive-activation channels discarded, LayerNorm + the block's AdaLN modulation (Gan et al. 2025).",
            is_output_node=True,  # shows its PCA preview even when nothing consumes the features yet
            inputs=[
                DiTFModelType.Input("ditf_model", tooltip="From Load DiT (DiTF) or Load DiT from diffusers folder."),
                io.Image.Input("image", tooltip="Images to describe (one batch, any size; grey and RGBA are converted "
                               "to RGB). Keypoints later map back to these original pixels."),
                io.Int.Input("layer", default=-1, min=LAYER_RANGE[0], max=LAYER_RANGE[1],
                             tooltip="Global block index k whose input is read (Flux: 0-18 double, 19-56 single "
                             "blocks). -1: the family default (Flux.1: 28; SD3/SD3.5: ~0.49 of the depth)."),
                *sampling_inputs("features"),
                io.String.Input("discard", default="auto", tooltip="Channels zeroed before LayerNorm (mode ditf): auto "
                                "(massive-activation channels found at block k), none, or numbers like 154, 1446."),
                io.Combo.Input("mode", options=list(MODES), default="ditf", tooltip="; ".join(
                    f"{mode}: {MODE_HELP[mode]}" for mode in MODES)),
                *text_inputs(),
            ],
            outputs=[
                DiTFeaturesType.Output(display_name="features", tooltip="DiTF features [B, C, h, w] with their "
                                       "settings and pixel <-> feature mapping."),
                io.Image.Output(display_name="preview", tooltip="PCA of the features (one projection for the whole "
                                "batch: equal colours, similar features) at the input image size."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, t=None, discard=None, mode=None) -> bool | str:
        # What ComfyUI does not check itself (NaN, combo membership, the discard text); an input named here loses
        # ComfyUI's min/max check, hence so few. Linked inputs arrive as None; execute() checks everything again.
        try:
            _check_widgets(None, t, None, None, None, discard, mode)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, ditf_model: DiTFModel, image, layer: int, t: float, ensemble: int, seed: int, resolution: int,
                discard: str, mode: str, conditioning=None, prompt: str = "") -> io.NodeOutput:
        if not isinstance(ditf_model, DiTFModel):
            raise TypeError(f"ditf_model must come from a Load DiT (DiTF) node, got {type(ditf_model).__name__}")
        spec = _check_widgets(layer, t, ensemble, resolution, seed, discard, mode)
        features = ditf_model.extract(
            image_batch(image),
            layer=layer,
            t=t,
            ensemble=ensemble,
            resolution=resolution,
            seed=seed,
            mode=mode,
            discard=spec,
            prompt=prompt or "",
            conditioning=conditioning,
            progress=comfy_host.progress_reporter(ensemble),  # one pass per noise draw (more if memory needs)
            available_memory=comfy_host.free_memory(ditf_model.host.device),
        )
        preview = preview_image(features)
        return io.NodeOutput(features, preview, ui=ui.PreviewImage(preview, cls=cls))


def _check_widgets(layer, t, ensemble, resolution, seed, discard, mode):
    """Raise on a bad widget value (None: not known yet); return the parsed discard spec."""
    if layer is not None:
        check_int("layer", layer, *LAYER_RANGE)
    check_sampling(t=t, ensemble=ensemble, seed=seed, resolution=resolution)
    if mode is not None:
        check_choice("mode", mode, MODES)
    return None if discard is None else parse_discard(discard)
