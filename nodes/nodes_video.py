"""Propagate Mask (DiTF) and Track Points (DiTF): DiTF correspondence through the frames of a clip.

Both stream the frames through the DITF_MODEL (``frames_per_pass`` at a time) and keep only what the engine needs
(``ditf_core.video``: the context queue, or the query frame and templates), so their memory does not grow with the
clip; the outputs (a mask and a picture per frame) of course do. Progress bar and Cancel per frame.
"""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io
from typing_extensions import override

from ..ditf_core.matching import format_points, parse_points
from ..ditf_core.video import PropagationSettings, TrackSettings, draw_tracks, overlay_labels, propagate_clip, track_clip
from . import comfy_host
from .checks import MAX_SEED, check_float, check_int, parse_discard
from .images_io import mask_batch
from .types import DiTFModelType
from .video_source import ComfyFrames, keyframe_labels, model_source, parse_keyframes
from .widgets import ENSEMBLE_RANGE, RESOLUTION_RANGE, T_RANGE, text_inputs

CATEGORY = "DiTF/video"
FRAMES_PER_PASS = (1, 64)
CONTEXT_RANGE, RADIUS_RANGE, TOP_K_RANGE, TEMPERATURE_RANGE = (0, 32), (0, 64), (1, 64), (0.001, 10.0)
SEARCH_RANGE = (0, 256)


class PropagateMask(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        defaults = PropagationSettings()
        return io.Schema(
            node_id="DiTFPropagateMask",
            display_name="Propagate Mask (DiTF)",
            category=CATEGORY,
            description="Carry a mask from the first frame (or keyframes) through a clip: DAVIS-style label "
            "propagation on DiTF features (first frame + recent frames as context, local top-k affinity).",
            inputs=[
                *_clip_inputs("the object's mask"),
                io.Mask.Input("mask", tooltip="The object's mask on the first frame (frame size); with keyframes, one "
                              "mask per keyframe, in order (a MASK batch)."),
                io.String.Input("keyframes", default="0", tooltip="Frames the masks belong to, e.g. 0 or 0, 40, 80 "
                                "(must start with 0). At a keyframe its mask is used and propagation restarts from it."),
                *_extraction_inputs(),
                io.Int.Input("context", default=defaults.context, min=CONTEXT_RANGE[0], max=CONTEXT_RANGE[1],
                             tooltip="Previous frames used besides the first (keyframe). DAVIS protocol: 7."),
                io.Int.Input("radius", default=defaults.radius, min=RADIUS_RANGE[0], max=RADIUS_RANGE[1],
                             tooltip="A cell takes labels only from cells within this many feature cells. Protocol: 12."),
                io.Int.Input("top_k", default=defaults.top_k, min=TOP_K_RANGE[0], max=TOP_K_RANGE[1],
                             tooltip="Most similar context cells each cell takes its label from. Protocol: 5."),
                io.Float.Input("temperature", default=defaults.temperature, min=TEMPERATURE_RANGE[0],
                               max=TEMPERATURE_RANGE[1], step=0.01, round=0.001,
                               tooltip="tau in exp(cosine / tau): lower trusts the best match more. Protocol: 0.1."),
                *text_inputs(),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="The object's mask on every frame [T, H, W] (1 inside)."),
                io.Image.Output(display_name="overlay", tooltip="Every frame with the mask tinted and outlined."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, keyframes=None, t=None, discard=None, temperature=None) -> bool | str:
        try:
            _check_widgets(t=t, discard=discard)
            if keyframes is not None:
                parse_keyframes(keyframes)
            if temperature is not None:
                check_float("temperature", temperature, *TEMPERATURE_RANGE)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, ditf_model, frames, mask, keyframes: str, layer: int, t: float, ensemble: int, seed: int,
                resolution: int, discard: str, frames_per_pass: int, context: int, radius: int, top_k: int,
                temperature: float, conditioning=None, prompt: str = "") -> io.NodeOutput:
        spec = _check_widgets(layer, t, ensemble, seed, resolution, discard, frames_per_pass)
        settings = PropagationSettings(context=check_int("context", context, *CONTEXT_RANGE),
                                       radius=check_int("radius", radius, *RADIUS_RANGE),
                                       top_k=check_int("top_k", top_k, *TOP_K_RANGE),
                                       temperature=check_float("temperature", temperature, *TEMPERATURE_RANGE))
        clip = _clip(frames)
        labels = keyframe_labels(mask_batch(mask, "mask"), parse_keyframes(keyframes), len(clip), clip.size)
        source, _ = model_source(ditf_model, layer=layer, t=t, ensemble=ensemble, resolution=resolution, seed=seed,
                                 discard=spec, prompt=prompt or "", conditioning=conditioning)
        first = labels.pop(0)
        masks, overlays = [], []
        for index, label_map in enumerate(propagate_clip(
                source, clip, first, keyframes=labels, settings=settings, micro_batch=frames_per_pass,
                progress=comfy_host.progress_reporter(len(clip)))):
            masks.append(label_map.to(torch.float32))
            overlays.append(overlay_labels(clip[index], label_map).movedim(0, -1))
        return io.NodeOutput(torch.stack(masks), torch.stack(overlays))


class TrackPoints(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        defaults = TrackSettings()
        return io.Schema(
            node_id="DiTFTrackPoints",
            display_name="Track Points (DiTF)",
            category=CATEGORY,
            description="Follow points of the first frame through a clip with DiTF features: windowed cosine search "
            "with a global fallback, query + recent templates, occlusion when the match is weak or fails the way back.",
            inputs=[
                *_clip_inputs("the points"),
                io.String.Input("points", default="[]", multiline=True, tooltip="Points on the FIRST frame in its "
                                "pixels, as KJNodes PointsEditor JSON, e.g. [{\"x\": 120, \"y\": 80}] (also [[x, y]])."),
                *_extraction_inputs(),
                io.Float.Input("threshold", default=defaults.threshold, min=0.0, max=1.0, step=0.01, round=0.001,
                               tooltip="A point whose best cosine similarity is below this is marked occluded."),
                io.Int.Input("search_radius", default=defaults.search_radius, min=SEARCH_RANGE[0], max=SEARCH_RANGE[1],
                             tooltip="Feature cells searched around the last visible position before the whole frame."),
                *text_inputs(),
            ],
            outputs=[
                io.String.Output(display_name="tracks", tooltip="JSON: per frame {\"frame\", \"points\": [{\"x\", "
                                 "\"y\", \"visible\", \"score\"}]} in frame pixels (occluded: last known place)."),
                io.String.Output(display_name="points_per_frame", is_output_list=True, tooltip="One KJNodes JSON per "
                                 "frame with the visible points, for nodes that take points (runs them once per frame)."),
                io.String.Output(display_name="visibility", tooltip="JSON: per frame, per point true (visible) or "
                                 "false (occluded)."),
                io.Image.Output(display_name="visualization", tooltip="Every frame with the points (filled: "
                                "visible, hollow: occluded) and their recent trails, in the points' colours."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, points=None, t=None, discard=None, threshold=None) -> bool | str:
        try:
            _check_widgets(t=t, discard=discard)
            if points is not None:
                parse_points(points)
            if threshold is not None:
                check_float("threshold", threshold, 0.0, 1.0)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, ditf_model, frames, points: str, layer: int, t: float, ensemble: int, seed: int,
                resolution: int, discard: str, frames_per_pass: int, threshold: float, search_radius: int,
                conditioning=None, prompt: str = "") -> io.NodeOutput:
        spec = _check_widgets(layer, t, ensemble, seed, resolution, discard, frames_per_pass)
        settings = TrackSettings(threshold=check_float("threshold", threshold, 0.0, 1.0),
                                 search_radius=check_int("search_radius", search_radius, *SEARCH_RANGE))
        clip = _clip(frames)
        query = parse_points(points)
        if query.shape[0] == 0:
            raise ValueError("points is empty: give the points to follow on the first frame, e.g. "
                             '[{"x": 120, "y": 80}] (a KJNodes Points Editor writes this)')
        source, _ = model_source(ditf_model, layer=layer, t=t, ensemble=ensemble, resolution=resolution, seed=seed,
                                 discard=spec, prompt=prompt or "", conditioning=conditioning)
        records, per_frame, visibility, pictures, history = [], [], [], [], []
        for index, step in enumerate(track_clip(source, clip, query, settings=settings, micro_batch=frames_per_pass,
                                                progress=comfy_host.progress_reporter(len(clip)))):
            records.append(step.record(index))
            per_frame.append(format_points(step.xy[step.visible]))
            visibility.append(step.visible.tolist())
            history = [*history[-7:], step.xy]
            pictures.append(draw_tracks(clip[index], history, step.visible).movedim(0, -1))
        return io.NodeOutput(json.dumps(records), per_frame, json.dumps(visibility), torch.stack(pictures))


def _clip_inputs(what: str) -> list:
    return [
        DiTFModelType.Input("ditf_model", tooltip="From Load DiT (DiTF) or Load DiT from diffusers folder."),
        io.Image.Input("frames", tooltip=f"The clip as an IMAGE batch, first frame first (e.g. from a video loader); "
                       f"{what} refer to its first frame. At least 2 frames, all one size."),
    ]


def _extraction_inputs() -> list:
    return [
        io.Int.Input("layer", default=-1, min=-1, max=255, tooltip="Global block index k. -1: the video default (Flux: "
                     "24, DiTF's DAVIS setting; other families: their feature default)."),
        io.Float.Input("t", default=0.0, min=0.0, max=T_RANGE[1], step=0.01, round=0.001, tooltip="Flow-matching "
                       "noise level. 0: the video default (Flux: 0.09, DiTF's DAVIS setting; others: 0.26)."),
        io.Int.Input("ensemble", default=0, min=0, max=ENSEMBLE_RANGE[1], tooltip="Noise draws averaged per frame. 0: "
                     "the video default (Flux: 1, DiTF's DAVIS setting; others: 8)."),
        io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                     tooltip="Seed of the noise draws (the same draws for every frame)."),
        io.Int.Input("resolution", default=0, min=0, max=RESOLUTION_RANGE[1], step=16, tooltip="Long side fed to the "
                     "model. 0: the video default (Flux: 960, DiTF's DAVIS setting; others: 640)."),
        io.String.Input("discard", default="auto", tooltip="Channels zeroed before LayerNorm: auto (massive channels "
                        "found on the first frames, then kept for the whole clip), none, or numbers like 154, 1446."),
        io.Int.Input("frames_per_pass", default=1, min=FRAMES_PER_PASS[0], max=FRAMES_PER_PASS[1],
                     tooltip="Frames through the model at once: more is faster on a large GPU, 1 uses least memory."),
    ]


def _check_widgets(layer=None, t=None, ensemble=None, seed=None, resolution=None, discard=None, frames_per_pass=None):
    """Raise on a bad value (None: not known yet); return the parsed discard spec."""
    if layer is not None:
        check_int("layer", layer, -1, 255)
    if t is not None and 0 < check_float("t", t, 0.0, T_RANGE[1]) < T_RANGE[0]:
        raise ValueError(f"t must be 0 (the video default) or in [{T_RANGE[0]}, {T_RANGE[1]}], got {t}")
    if ensemble is not None:
        check_int("ensemble", ensemble, 0, ENSEMBLE_RANGE[1])
    if seed is not None:
        check_int("seed", seed, 0, MAX_SEED)
    if resolution is not None and 0 < check_int("resolution", resolution, 0, RESOLUTION_RANGE[1]) < RESOLUTION_RANGE[0]:
        raise ValueError(f"resolution must be 0 (the video default) or at least {RESOLUTION_RANGE[0]}, got {resolution}")
    if frames_per_pass is not None:
        check_int("frames_per_pass", frames_per_pass, *FRAMES_PER_PASS)
    return None if discard is None else parse_discard(discard)


def _clip(frames) -> ComfyFrames:
    clip = ComfyFrames(frames)
    if len(clip) < 2:
        raise ValueError(f"frames holds {len(clip)} frame; a clip needs at least 2 (for a single image use Extract "
                         "DiTF Features and Correspondence Match)")
    return clip
