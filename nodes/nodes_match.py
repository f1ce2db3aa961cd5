"""Correspondence Match: two DITF_FEATURES + source points (KJNodes JSON) or a mask -> target points, a DITF_MATCH for
the warp node, a picture of the matches and the dense match confidence."""

from __future__ import annotations

from dataclasses import replace

from comfy_api.latest import io, ui
from typing_extensions import override

from ..ditf_core.matching import MODES, parse_points
from ..ditf_core.matching.points import MAX_POINTS
from . import comfy_host, explorer_cache
from .checks import check_choice, check_float, check_int, image_batch
from .images_io import mask_batch, pick, pictures_to_image, to_comfy_image
from .match_value import MAX_MASK_POINTS, match_features, match_pictures, target_points_json, ui_entry
from .types import DiTFeaturesType, DiTFMatchType

CYCLE_TOLERANCE_RANGE = (0.1, 64.0)
MODE_HELP = {
    "fast": "feature resolution + sub-cell soft-argmax, within about one feature cell of exact (interactive use)",
    "exact": "the paper's protocol: both maps upsampled to image size, argmax at pixel resolution (slower)",
}


class CorrespondenceMatch(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFCorrespondenceMatch",
            display_name="Correspondence Match (DiTF)",
            category="DiTF",
            description="Where do these source points land in the target? Cosine nearest neighbours of DiTF features, "
            "sparse (your points) and dense (every feature cell, both ways, with cycle-consistency confidence).",
            is_output_node=True,  # shows the matches (and feeds the point editor) even when nothing is connected
            inputs=[
                DiTFeaturesType.Input("source", tooltip="Features of the source image(s), from Extract DiTF Features."),
                DiTFeaturesType.Input("target", tooltip="Features of the target image(s), from the same model, layer "
                                      "and mode. Pairs match in order; one image on either side is shared."),
                io.Image.Input("source_image", tooltip="The IMAGE the source features were extracted from (same size "
                               "and count): points are its pixels; it is drawn in the picture."),
                io.Image.Input("target_image", tooltip="The IMAGE the target features were extracted from."),
                io.String.Input("points", default="[]", multiline=True, tooltip="Source points in ORIGINAL source "
                                "pixels as KJNodes PointsEditor JSON, e.g. [{\"x\": 120, \"y\": 80}] (also [[x, y], "
                                f"...]); click on the source image to add. At most {MAX_POINTS} points. Empty: points "
                                "spread inside source_mask."),
                io.Combo.Input("mode", options=list(MODES), default="fast", tooltip="; ".join(
                    f"{mode}: {MODE_HELP[mode]}" for mode in MODES)),
                io.Int.Input("max_points", default=8, min=1, max=MAX_MASK_POINTS, tooltip="With empty points: how "
                             "many points to spread evenly inside source_mask (away from its edges)."),
                io.Float.Input("cycle_tolerance", default=2.0, min=CYCLE_TOLERANCE_RANGE[0],
                               max=CYCLE_TOLERANCE_RANGE[1], step=0.1, round=0.01, tooltip="Dense confidence: a "
                               "match whose round trip target -> source -> target misses by this many feature cells "
                               "gets confidence 0 (0 cells: 1, mutual nearest neighbours)."),
                io.Mask.Input("source_mask", optional=True, tooltip="Optional mask on the source image: points "
                              "outside it are marked invalid, dense matches only come from inside it, and with "
                              "empty points it supplies the points."),
                io.Mask.Input("target_mask", optional=True, tooltip="Optional mask on the target image: matches "
                              "may only land inside it."),
            ],
            outputs=[
                io.String.Output(display_name="target_points", tooltip="Matched target points of the FIRST pair as "
                                 "KJNodes JSON [{\"x\", \"y\"}] in target pixels (points outside source_mask left "
                                 "out); every pair is in match and on the node."),
                DiTFMatchType.Output(display_name="match", tooltip="All pairs matched: dense both ways with "
                                     "confidence, the sparse points, the image sizes. For Warp / Appearance Transfer."),
                io.Image.Output(display_name="visualization", tooltip="Per pair: source and target side by side, each "
                                "point and its match in one colour, joined by a line (hollow: outside source_mask)."),
                io.Mask.Output(display_name="confidence", tooltip="Dense cycle-consistency confidence of each "
                               "target pixel's match, at the target image size (1: mutual nearest neighbours)."),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, mode=None, cycle_tolerance=None, points=None) -> bool | str:
        # ComfyUI 0.3.64 checks neither V3 combo values nor NaN; linked inputs arrive as None. The points text is
        # checked here for syntax and NaN (whether the points lie inside the image is known only when it runs).
        try:
            _check_widgets(mode, None, cycle_tolerance)
            if points is not None:
                parse_points(points)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, source, target, source_image, target_image, points: str, mode: str, max_points: int,
                cycle_tolerance: float, source_mask=None, target_mask=None) -> io.NodeOutput:
        _check_widgets(mode, max_points, cycle_tolerance)
        source_pixels = image_batch(source_image, "source_image")
        target_pixels = image_batch(target_image, "target_image")
        match = match_features(
            source, target, points, source_pixels=source_pixels, target_pixels=target_pixels, mode=mode,
            source_mask=mask_batch(source_mask, "source_mask"), target_mask=mask_batch(target_mask, "target_mask"),
            max_points=max_points, cycle_tolerance=cycle_tolerance,
            progress=comfy_host.progress_reporter(1),  # the searches report their chunks; Cancel stops between them
        )
        visualization = pictures_to_image(match_pictures(match, source_pixels, target_pixels))
        _, confidence = match.dense.target_to_source_pixels()
        previews = ui.PreviewImage(visualization, cls=cls).as_dict()
        entries = _ui_entries(cls, match, source, target, source_pixels, target_pixels)
        return io.NodeOutput(target_points_json(match), match, visualization, confidence.clamp(0.0, 1.0).contiguous(),
                             ui={**previews, "ditf_match": entries})


def _ui_entries(cls, match, source, target, source_pixels, target_pixels) -> list[dict]:
    """One entry per pair for the point editor. Each image is saved once as a temp preview (as PreviewImage does);
    the first ``explorer_cache.MAX_PAIRS`` pairs are kept for the live explorer, later ones get explorer None."""
    saved = {}

    def preview(side: str, pixels, index: int) -> dict:
        if (side, index) not in saved:
            saved[side, index] = ui.PreviewImage(to_comfy_image(pixels[index : index + 1]), cls=cls).values[0]
        return saved[side, index]

    entries = []
    for i in range(match.pairs):
        s, t = pick(i, source.batch), pick(i, target.batch)
        kept = i < explorer_cache.MAX_PAIRS
        explorer = explorer_cache.remember(_alone(source, s), _alone(target, t)) if kept else None
        entries.append(ui_entry(match, i, explorer=explorer, source_image=preview("source", source_pixels, s),
                                target_image=preview("target", target_pixels, t)))
    return entries


def _alone(features, index: int):
    """Image ``index`` in its own storage (a view would keep the whole batch alive in the explorer cache)."""
    if features.batch == 1:
        return features
    return replace(features, features=features.features[index : index + 1].clone())


def _check_widgets(mode, max_points, cycle_tolerance) -> None:
    if mode is not None:
        check_choice("mode", mode, MODES)
    if max_points is not None:
        check_int("max_points", max_points, 1, MAX_MASK_POINTS)
    if cycle_tolerance is not None:
        check_float("cycle_tolerance", cycle_tolerance, *CYCLE_TOLERANCE_RANGE)
