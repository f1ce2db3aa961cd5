"""Propagate Mask (DiTF) and Track Points (DiTF) executed in-process on ComfyUI's own model classes: outputs, one
progress step per frame, the video defaults and the prompt encoded once, bad input named, and Cancel mid-clip
leaving the user's MODEL untouched."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from ditf_core.demo_model import build_demo_dit

import tiny_models
from test_comfy_host import random_conditioning, sample, snapshot, assert_same

pytestmark = pytest.mark.comfyui

SMALL = dict(layer=-1, t=0.26, ensemble=1, seed=0, resolution=64, discard="auto", frames_per_pass=2)
PROPAGATION = dict(context=7, radius=12, top_k=5, temperature=0.1)
TRACKING = dict(threshold=0.6, search_radius=8)
POINTS = '[{"x": 20, "y": 16}, {"x": 44, "y": 30}]'


@pytest.fixture(scope="module")
def mods(pack):
    names = ("nodes_video", "nodes_load", "comfy_host", "model", "video_source")
    return {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}


@pytest.fixture(scope="module")
def flux_model(mods, comfy):
    import comfy.sd

    vae = comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))
    flux = tiny_models.comfy_flux(build_demo_dit(0))
    with torch.inference_mode():
        ditf_model, _ = mods["nodes_load"].LoadDiT.execute(flux, vae).result
    return ditf_model


def panning_clip(frames: int = 5, height: int = 48, width: int = 64) -> torch.Tensor:
    """IMAGE [T, H, W, 3]: a smooth random picture seen through a window moving 3 px right per frame."""
    generator = torch.Generator().manual_seed(0)
    scene = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 40, generator=generator), size=(height, width + 3 * frames),
                                            mode="bicubic", align_corners=False).clamp(0, 1)[0]
    return torch.stack([scene[:, :, 3 * t : 3 * t + width] for t in range(frames)]).movedim(1, -1).contiguous()


def box_mask(batch: int = 1, height: int = 48, width: int = 64) -> torch.Tensor:
    mask = torch.zeros(batch, height, width)
    mask[:, 12:30, 16:40] = 1.0
    return mask


def run_with_progress(fn):
    import comfy.utils

    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append((value, total)))
    try:
        with torch.inference_mode():
            return fn(), steps
    finally:
        comfy.utils.set_progress_bar_global_hook(None)


def test_propagate_mask_node_runs_frame_by_frame(mods, flux_model):
    frames = panning_clip()
    output, steps = run_with_progress(lambda: mods["nodes_video"].PropagateMask.execute(
        flux_model, frames, box_mask(), "0", **SMALL, **PROPAGATION))
    masks, overlay = output.result
    assert steps == [(i, 5) for i in range(1, 6)]  # one progress step per frame
    assert masks.shape == (5, 48, 64) and overlay.shape == (5, 48, 64, 3)
    assert torch.equal(masks[0], box_mask()[0]) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[1:].sum() > 0  # random weights: something is propagated, not necessarily the box
    assert not torch.equal(overlay[0], frames[0])  # the mask is drawn on the first frame


def test_track_points_node_outputs_per_frame(mods, flux_model):
    output, steps = run_with_progress(lambda: mods["nodes_video"].TrackPoints.execute(
        flux_model, panning_clip(), POINTS, **SMALL, **TRACKING))
    tracks, per_frame, visibility, pictures = output.result
    assert steps == [(i, 5) for i in range(1, 6)]
    tracks = json.loads(tracks)
    assert [entry["frame"] for entry in tracks] == list(range(5)) and len(tracks[0]["points"]) == 2
    assert tracks[0]["points"][0] == {"x": 20, "y": 16, "visible": True, "score": 1.0}
    assert len(per_frame) == 5 and json.loads(per_frame[0]) == [{"x": 20, "y": 16}, {"x": 44, "y": 30}]
    visible = json.loads(visibility)
    assert len(visible) == 5 and visible[0] == [True, True]
    for entry, text, flags in zip(tracks, per_frame, visible):  # the KJNodes list holds exactly the visible points
        shown = [{"x": p["x"], "y": p["y"]} for p in entry["points"] if p["visible"]]
        assert json.loads(text) == shown and flags == [p["visible"] for p in entry["points"]]
    assert pictures.shape == (5, 48, 64, 3)


class CountingClip:
    """A stand-in ComfyUI CLIP for the tiny Flux (text width 32): counts encodes, remembers the prompts."""

    def __init__(self):
        self.prompts = []

    def tokenize(self, text):
        self.prompts.append(text)
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return random_conditioning(1, 32, 32, guidance=3.5)


def test_video_defaults_and_the_prompt_encoded_once_per_clip(mods, flux_model):
    source_fn = mods["video_source"].model_source
    _, chosen = source_fn(flux_model, layer=-1, t=0.0, ensemble=0, resolution=0, seed=0, discard="auto")
    assert (chosen.layer, chosen.t, chosen.ensemble, chosen.resolution) == (3, 0.09, 1, 960)  # Flux video defaults
    assert chosen.prompt == ""  # no CLIP wired: zero conditioning
    clip = CountingClip()
    with_clip = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(flux_model.host.model, flux_model.host.vae, clip))
    with torch.inference_mode():
        masks, _ = mods["nodes_video"].PropagateMask.execute(
            with_clip, panning_clip(4), box_mask(), "0", **{**SMALL, "frames_per_pass": 1}, **PROPAGATION).result
    assert clip.prompts == ["a photo of a image"] and masks.shape[0] == 4  # DiTF's DAVIS prompt, encoded once


@pytest.mark.parametrize("change, message", [
    (dict(mask=box_mask(width=32)), "mask is 32x48 but the frames are 64x48"),
    (dict(mask=torch.zeros(1, 48, 64)), "mask 0 (keyframe 0) is empty"),
    (dict(frames=panning_clip(1)), "frames holds 1 frame; a clip needs at least 2"),
    (dict(mask=box_mask(2)), "mask holds 2 masks but keyframes lists 1 frames"),
    (dict(mask=box_mask(2), keyframes="0, 9"), "keyframe 9 is beyond the clip: frames holds 5 frames"),
    (dict(keyframes="3"), "keyframes must start with 0"),
    (dict(frames=torch.rand(5, 48, 64)), "frames must be an IMAGE batch [T, H, W, C]"),
])
def test_propagate_mask_bad_input_names_the_input(mods, flux_model, change, message):
    inputs = dict(ditf_model=flux_model, frames=panning_clip(), mask=box_mask(), keyframes="0", **SMALL, **PROPAGATION)
    with pytest.raises(ValueError) as error, torch.inference_mode():
        mods["nodes_video"].PropagateMask.execute(**{**inputs, **change})
    assert message in str(error.value)


@pytest.mark.parametrize("points, message", [
    ('[{"x": 20, "y": 16}, {"x": 90, "y": 10}]', "points[1] = (90, 10) lies outside the 64x48"),
    ("[]", "points is empty"),
])
def test_track_points_bad_input_names_the_input(mods, flux_model, points, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")), \
            torch.inference_mode():
        mods["nodes_video"].TrackPoints.execute(flux_model, panning_clip(), points, **SMALL, **TRACKING)


@pytest.mark.parametrize("node, widgets, message", [
    ("PropagateMask", dict(t=float("nan")), "t must be a finite number"),
    ("PropagateMask", dict(keyframes="0, x"), "keyframes must be frame numbers"),
    ("PropagateMask", dict(temperature=float("nan")), "temperature must be a finite number"),
    ("TrackPoints", dict(points="[{"), "points are not valid JSON"),
    ("TrackPoints", dict(threshold=float("nan")), "threshold must be a finite number"),
    ("TrackPoints", dict(discard="1; x"), "discard must be 'auto', 'none'"),
])
def test_validate_inputs_catches_what_comfyui_does_not(mods, node, widgets, message):
    cls = getattr(mods["nodes_video"], node)
    assert message in cls.validate_inputs(**widgets)
    assert cls.validate_inputs(t=0.0, discard="auto") is True


def test_cancel_mid_clip_leaves_the_users_model_untouched(mods, comfy):
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    model = tiny_models.comfy_sd3(tiny_models.tiny_sd35(seed=2))
    vae = comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("sd3"))
    with torch.inference_mode():
        before, state = sample(model), snapshot(model)
        ditf_model, _ = mods["nodes_load"].LoadDiT.execute(model, vae).result
    steps = []

    def cancel_at_frame_2(value, total, preview, node_id=None):
        steps.append(value)
        if value == 2:
            comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does

    comfy.utils.set_progress_bar_global_hook(cancel_at_frame_2)
    try:
        for node, extra in ((mods["nodes_video"].PropagateMask, dict(mask=box_mask(), keyframes="0", **PROPAGATION)),
                            (mods["nodes_video"].TrackPoints, dict(points=POINTS, **TRACKING))):
            steps.clear()
            with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
                node.execute(ditf_model, panning_clip(6), **{**SMALL, "frames_per_pass": 1}, **extra)
            assert steps == [1, 2]  # stopped right after the frame the user cancelled on
            assert not comfy.model_management.processing_interrupted()
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    with torch.inference_mode():
        after = sample(model)
    assert torch.equal(before, after)
    assert_same(state, snapshot(model))
