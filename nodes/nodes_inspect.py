"""Massive-Activation Inspector: DITF_MODEL + IMAGE -> report pictures (shown on the node), the JSON report and the
massive channels as text for Extract DiTF Features' discard input."""

from __future__ import annotations

import json

from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.inspect.analysis import MASSIVE_RATIO
from . import comfy_host
from .checks import check_float, image_batch
from .images_io import pictures_to_image
from .inspection import inspect_model, parse_layers
from .model import DiTFModel
from .types import DiTFModelType
from .widgets import check_sampling, sampling_inputs, text_inputs

RATIO_RANGE = (1.0, 1e6)


class MassiveActivationInspector(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFInspector",
            display_name="Massive-Activation Inspector (DiTF)",
            category="DiTF",
            description="Finds the massive-activation channels of a DiT at the chosen blocks (and sweeps every block), "
            "with plots, a JSON report and the channels to discard in Extract DiTF Features.",
            is_output_node=True,  # shows its report pictures on the node without a Preview Image
            inputs=[
                DiTFModelType.Input("ditf_model", tooltip="From Load DiT (DiTF) or Load DiT from diffusers folder."),
                io.Image.Input("image", tooltip="Images to inspect (one batch, any size; grey and RGBA become RGB). "
                               "Several images show how stable the channels are."),
                io.String.Input("layers", default="", tooltip="Blocks to inspect in detail: global indices like 28 or "
                                "20, 28 (Flux: 0-18 double, 19-56 single blocks). Empty: the family default (Flux.1: "
                                "28). channels reports the first one."),
                io.Boolean.Input("sweep", default=True, tooltip="Also capture every block in the same pass and sweep "
                                 "them (where massive activations appear, how stable they are); off: only the layers."),
                *sampling_inputs("report"),
                io.Float.Input("ratio", default=MASSIVE_RATIO, min=RATIO_RANGE[0], max=RATIO_RANGE[1], step=1.0,
                               tooltip="A channel is massive when its median |activation| is at least ratio x the "
                               "median |activation| of the whole map (the paper's ~100x)."),
                *text_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="report", tooltip="The report pictures as one batch (channel magnitudes, "
                                "token x channel surface, AdaLN gate, PCA ablation per layer; the layer sweep), padded "
                                "with white to one size."),
                io.String.Output(display_name="report_json", tooltip="The full report as JSON (per layer: massive "
                                 "channels and ratios, Table 1, AdaLN comparison, gate alignment; the sweep)."),
                io.String.Output(display_name="channels", tooltip="Massive channels at the first layer, largest "
                                 "first, e.g. 154, 1446 (or none): connect to Extract DiTF Features' discard."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, layers=None, t=None, ratio=None) -> bool | str:
        # NaN passes ComfyUI's own range checks; the layers text is checked against the model at run time.
        try:
            _check_widgets(layers, t, None, None, None, ratio)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, ditf_model: DiTFModel, image, layers: str, sweep: bool, t: float, ensemble: int, seed: int,
                resolution: int, ratio: float, conditioning=None, prompt: str = "") -> io.NodeOutput:
        if not isinstance(ditf_model, DiTFModel):
            raise TypeError(f"ditf_model must come from a Load DiT (DiTF) node, got {type(ditf_model).__name__}")
        _check_widgets(layers, t, ensemble, resolution, seed, ratio)
        if not isinstance(sweep, bool):
            raise TypeError(f"sweep must be true or false, got {sweep!r}")
        inspection = inspect_model(
            ditf_model, image_batch(image), layers=parse_layers(layers, ditf_model), sweep=sweep, ratio=ratio,
            t=t, ensemble=ensemble, resolution=resolution, seed=seed, prompt=prompt or "", conditioning=conditioning,
            progress=comfy_host.progress_reporter(ensemble),
            available_memory=comfy_host.free_memory(ditf_model.host.device),
        )
        pictures = list(inspection.figures.values())
        previews = []  # each picture at its own size (the IMAGE output pads them to one)
        for picture in pictures:
            previews += ui.PreviewImage(pictures_to_image([picture]), cls=cls).values
        report = json.dumps(inspection.report, indent=2, sort_keys=True)
        return io.NodeOutput(pictures_to_image(pictures), report, inspection.channels_text,
                             ui={"images": previews, "animated": (False,)})


def _check_widgets(layers, t, ensemble, resolution, seed, ratio) -> None:
    if layers is not None:
        parse_layers(layers)  # the syntax; the range needs the model (checked when it runs)
    check_sampling(t=t, ensemble=ensemble, seed=seed, resolution=resolution)
    if ratio is not None:
        check_float("ratio", ratio, *RATIO_RANGE)
