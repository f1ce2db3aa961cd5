"""Find DiTF Layer executed in-process as ComfyUI calls it, on the ComfyUI host: outputs (INT layer and FLOAT t that
drive Extract DiTF Features), table, plot, JSON and the node's preview; checks of what ComfyUI leaves to the node;
Cancel honoured and the user's MODEL untouched."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import torch.nn.functional as F
from ditf_core.demo_model import build_demo_dit

import tiny_models

pytestmark = pytest.mark.comfyui

SETTINGS = dict(warps=2, t_values="0.2, 0.4", layers="1, 3, 5", ensemble=1, seed=0, resolution=128, mode="ditf")


@pytest.fixture(scope="module")
def mods(pack):
    names = ("nodes_tune", "nodes_load", "nodes_extract", "comfy_host")
    return {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}


@pytest.fixture(scope="module")
def ditf_model(mods):
    import comfy.sd

    flux = tiny_models.comfy_flux(build_demo_dit(0))
    vae = comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))
    with torch.inference_mode():
        return flux, mods["nodes_load"].LoadDiT.execute(flux, vae).result[0]


def images(count=2, size=(96, 128)):
    cells = torch.rand(count, 3, size[0] // 16, size[1] // 16, generator=torch.Generator().manual_seed(0))
    return F.interpolate(cells, size=size, mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)


def test_find_layer_node_outputs_drive_extract(mods, ditf_model):
    import comfy.utils

    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append((value, total)))
    try:
        with torch.inference_mode():
            output = mods["nodes_tune"].FindLayer.execute(ditf_model[1], images(), **SETTINGS)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    layer, t, table, plot, report = output.result
    assert isinstance(layer, int) and layer in (1, 3, 5) and t in (0.2, 0.4)
    assert f"best: layer {layer}, t {t:g}" in table and "<- best" in table
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3
    data = json.loads(report)
    assert data["best"]["layer"] == layer and data["layers"] == [1, 3, 5] and data["images"] == 2
    assert steps[-1] == (4, 4)  # one step per (image, t) capture
    assert output.ui is not None and output.ui.as_dict()["images"]
    with torch.inference_mode():  # the found setting wired into Extract's layer and t
        features, _ = mods["nodes_extract"].ExtractFeatures.execute(
            ditf_model[1], images(1), layer=layer, t=t, ensemble=1, seed=0, resolution=128, discard="auto",
            mode="ditf").result
    assert features.settings["layer"] == layer and features.settings["t"] == t


@pytest.mark.parametrize("widgets, message", [
    (dict(t_values="0.2, x"), "t_values must be numbers"),
    (dict(t_values="0.2, nan"), "strictly between 0 and 1"),
    (dict(layers="3, a"), "layers must be block numbers"),
    (dict(mode="bogus"), "mode must be one of"),
])
def test_validate_inputs_catches_what_comfyui_does_not(mods, widgets, message):
    node = mods["nodes_tune"].FindLayer
    assert message in node.validate_inputs(**widgets)
    assert node.validate_inputs(t_values="0.1, 0.26", layers="", mode="adaln") is True


def test_out_of_range_layers_and_cancel_leave_the_model_as_it_was(mods, ditf_model):
    import comfy.model_management
    import comfy.utils

    flux, model = ditf_model
    state = {k: v.clone() for k, v in flux.model.diffusion_model.state_dict().items()}
    with pytest.raises(ValueError, match="out of range"), torch.inference_mode():
        mods["nodes_tune"].FindLayer.execute(model, images(1), **{**SETTINGS, "layers": "2, 99"})

    def cancel(value, total, preview, node_id=None):
        comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does

    comfy.utils.set_progress_bar_global_hook(cancel)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
            mods["nodes_tune"].FindLayer.execute(model, images(1), **SETTINGS)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert not comfy.model_management.processing_interrupted()
    assert not flux.model_options.get("transformer_options", {}).get("patches_replace")
    assert all(torch.equal(state[k], v) for k, v in flux.model.diffusion_model.state_dict().items())
