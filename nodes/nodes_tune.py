"""Find DiTF Layer: DITF_MODEL + IMAGE -> the best block and t for these images (INT and FLOAT that connect to
Extract DiTF Features' layer and t), with the PCK table, a plot and the JSON report."""

from __future__ import annotations

import json

from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.pipeline import MODE_HELP, MODES
from ..ditf_core.tune import DEFAULT_WARPS
from . import comfy_host
from .checks import MAX_SEED, check_choice, check_int, image_batch
from .images_io import pictures_to_image
from .inspection import parse_layers
from .model import DiTFModel
from .tuning import find_model_layer, parse_ts
from .types import DiTFModelType
from .widgets import ENSEMBLE_RANGE, RESOLUTION_RANGE, check_sampling, text_inputs

WARPS_RANGE = (1, 32)


class FindLayer(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFFindLayer",
            display_name="Find DiTF Layer (DiTF)",
            category="DiTF",
            description="Measures which block and t give this model its most faithful correspondences on your own "
            "images: known random warps, every block captured in one pass per t, PCK at 0.05 and 0.10 vs the warp.",
            is_output_node=True,  # shows its plot on the node
            inputs=[
                DiTFModelType.Input("ditf_model", tooltip="From Load DiT (DiTF) or Load DiT from diffusers folder."),
                io.Image.Input("image", tooltip="Your images (a batch; each is warped and scored on its own). One to "
                               "four typical images of your task are enough."),
                io.Int.Input("warps", default=DEFAULT_WARPS, min=WARPS_RANGE[0], max=WARPS_RANGE[1],
                             tooltip="Random known warps per image (homography: shift, rotation, zoom, perspective; "
                             "plus colour jitter). More: steadier scores, longer runs."),
                io.String.Input("t_values", default="0.1, 0.26, 0.5", tooltip="The t grid to try, comma-separated, "
                                "each strictly between 0 and 1. One capture of every block per image and t."),
                io.String.Input("layers", default="", tooltip="Blocks to score, like 10, 20, 28 (global indices). "
                                "Empty: every block."),
                io.Int.Input("ensemble", default=2, min=ENSEMBLE_RANGE[0], max=ENSEMBLE_RANGE[1],
                             tooltip="Noise draws averaged per capture (Extract's default is 8; 2 ranks blocks "
                             "nearly as well at a quarter of the time)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the warps and the noise: the same seed gives the same table."),
                io.Int.Input("resolution", default=512, min=RESOLUTION_RANGE[0], max=RESOLUTION_RANGE[1], step=16,
                             tooltip="Long side fed to the model (both sides rounded to 16 px). Use what Extract "
                             "will use; memory grows with the blocks scored."),
                io.Combo.Input("mode", options=list(MODES), default="ditf", tooltip="Recipe variant scored; " + "; ".join(
                    f"{mode}: {MODE_HELP[mode]}" for mode in MODES)),
                *text_inputs(),
            ],
            outputs=[
                io.Int.Output(display_name="layer", tooltip="The best block (highest PCK at 0.10): connect it to "
                              "Extract DiTF Features' layer (convert that widget to an input)."),
                io.Float.Output(display_name="t", tooltip="The best t: connect it to Extract DiTF Features' t."),
                io.String.Output(display_name="table", tooltip="PCK at 0.05 / at 0.10 (%) of every block at every t, "
                                 "the best row marked."),
                io.Image.Output(display_name="plot", tooltip="Heatmaps of PCK at 0.10 and at 0.05 over block x t, the "
                                "best cell ringed."),
                io.String.Output(display_name="report_json", tooltip="The table as JSON: best (layer, t, PCK), "
                                 "layers, ts, PCK per alpha, scored matches per cell."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, t_values=None, layers=None, mode=None) -> bool | str:
        # What ComfyUI does not check itself: the text widgets' syntax and combo membership.
        try:
            _check_widgets(t_values, layers, mode)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, ditf_model: DiTFModel, image, warps: int, t_values: str, layers: str, ensemble: int, seed: int,
                resolution: int, mode: str, conditioning=None, prompt: str = "") -> io.NodeOutput:
        if not isinstance(ditf_model, DiTFModel):
            raise TypeError(f"ditf_model must come from a Load DiT (DiTF) node, got {type(ditf_model).__name__}")
        ts = _check_widgets(t_values, layers, mode)
        check_int("warps", warps, *WARPS_RANGE)
        check_sampling(ensemble=ensemble, seed=seed, resolution=resolution)
        pixels = image_batch(image)
        search = find_model_layer(
            ditf_model, pixels, layers=parse_layers(layers, ditf_model) if layers.strip() else None, ts=ts,
            warps=warps, seed=seed, mode=mode, ensemble=ensemble, resolution=resolution, prompt=prompt or "",
            conditioning=conditioning, progress=comfy_host.progress_reporter(len(ts) * pixels.shape[0]),
        )
        plot = pictures_to_image([search.plot()])
        report = json.dumps(search.to_dict(), indent=2, sort_keys=True)
        return io.NodeOutput(search.best_layer, search.best_t, search.table(), plot, report,
                             ui=ui.PreviewImage(plot, cls=cls))


def _check_widgets(t_values, layers, mode) -> list[float] | None:
    if layers is not None:
        parse_layers(layers)  # the syntax; the range needs the model (checked when it runs)
    if mode is not None:
        check_choice("mode", mode, MODES)
    return None if t_values is None else parse_ts(t_values)
