"""Warp / Appearance Transfer from a DITF_MATCH, and the LATENT rules of the node. No ComfyUI import.

Methods (images [N, 3, H, W] in [0, 1]; each output is laid out like the TARGET image):

* ``flow`` - every target pixel takes the colour of its dense match in the source (``warp_to_target``);
* ``tps`` - thin-plate spline through control points: the confident dense matches that agree with a RANSAC
  homography (raw mutual nearest neighbours include outliers, and a spline interpolates every one of them);
* ``homography`` - one RANSAC homography (near-planar scenes, camera rotation);
* ``appearance`` - the target image with the source's colours and texture carried over by correspondence,
  blended by ``strength`` x match confidence (needs the target image).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..ditf_core.errors import DiTFInputError
from ..ditf_core.warping import (
    confident_matches,
    fit_homography,
    transfer_appearance,
    transfer_mask,
    warp_homography,
    warp_tps,
    warp_to_target,
)
from .images_io import broadcast_batch, check_image_size, pick
from .match_value import CorrespondenceMatch

METHODS = ("flow", "tps", "homography", "appearance")
METHOD_HELP = {
    "flow": "dense flow, every target pixel from its source match",
    "tps": "thin-plate spline through confident matches that agree with a RANSAC homography",
    "homography": "one RANSAC homography (near-planar scenes)",
    "appearance": "target_image with the source's colours, blended by strength x confidence",
}
MAX_CONTROL_POINTS = 256
MIN_HOMOGRAPHY_POINTS = 5
MIN_TPS_POINTS = 3


@dataclass(frozen=True)
class WarpResult:
    """image: [N, 3, H_t, W_t]; mask: [N, H_t, W_t] in [0, 1] (the transferred mask, or where the warp is valid:
    cycle confidence for flow / appearance, inside-the-source for tps / homography); control_points: per item, the
    number of matches the tps / homography fit used (None for flow / appearance)."""

    image: torch.Tensor
    mask: torch.Tensor
    control_points: list[int | None]


def warp_with_match(
    match: CorrespondenceMatch,
    image: torch.Tensor,
    method: str,
    *,
    target_image: torch.Tensor | None = None,
    strength: float = 1.0,
    min_confidence: float = 0.5,
    mask: torch.Tensor | None = None,
) -> WarpResult:
    """Warp ``image`` [N or 1, 3, H_s, W_s] (a source image or an edit of it, at the source size) onto the target
    layout of each matched pair.

    target_image: [N or 1, 3, H_t, W_t], required for ``appearance``. mask: a source mask [N or 1, H_s, W_s] to
    carry along. min_confidence: the cycle confidence a dense match needs to count (control points of tps /
    homography; appearance blends and masks are 0 below it). Batches pair up in order; 1 is shared.
    """
    if method not in METHODS:
        raise DiTFInputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(match, CorrespondenceMatch):
        raise TypeError(f"match must come from a Correspondence Match (DiTF) node, got {type(match).__name__}")
    if method == "appearance" and target_image is None:
        raise DiTFInputError(
            "method appearance needs target_image: connect the target IMAGE (the one matched as target) to give its "
            "structure the source's colours; or pick method flow, tps or homography, which need only the source"
        )
    source_size, target_size = match.source_size, match.target_size
    check_image_size(image, source_size, "image", "the match was made for source images of")
    sizes = {"match pairs": match.pairs, "image": image.shape[0]}
    if target_image is not None:
        check_image_size(target_image, target_size, "target_image", "the match was made for target images of")
        sizes["target_image"] = target_image.shape[0]
    if mask is not None:
        if tuple(mask.shape[-2:]) != (source_size[1], source_size[0]):
            raise DiTFInputError(
                f"mask is {mask.shape[-1]}x{mask.shape[-2]} but must be a SOURCE mask of {source_size[0]}x"
                f"{source_size[1]} (it is carried from the source onto the target layout)"
            )
        sizes["mask"] = mask.shape[0]
    count = broadcast_batch(sizes)
    images, masks, used = [], [], []
    for i in range(count):
        dense = match.pair(pick(i, match.pairs))
        source = image[pick(i, image.shape[0])][None].float()
        source_mask = None if mask is None else mask[pick(i, mask.shape[0])][None, None].float()
        if method in ("flow", "appearance"):
            _, confidence = dense.target_to_source_pixels()
            confidence = confidence * (confidence >= min_confidence)  # [1, H_t, W_t]
            if method == "flow":
                warped = warp_to_target(source, dense)
            else:
                target = target_image[pick(i, target_image.shape[0])][None].float()
                cells = dense.target_confidence
                gated = replace(dense, target_confidence=cells * (cells >= min_confidence))
                warped = transfer_appearance(source, target, gated, strength=strength)
            images.append(warped)
            if source_mask is None:
                masks.append(confidence)
            else:
                masks.append(transfer_mask(source_mask, dense, min_confidence=min_confidence)[:, 0])
            used.append(None)
        else:
            warp, points = _geometric_warp(dense, method, min_confidence, target_size)
            images.append(warp(source))
            coverage = torch.ones(1, 1, source.shape[-2], source.shape[-1]) if source_mask is None else source_mask
            masks.append(warp(coverage)[:, 0])
            used.append(points)
    return WarpResult(torch.cat(images).clamp(0.0, 1.0), torch.cat(masks).clamp(0.0, 1.0), used)


def _geometric_warp(dense, method: str, min_confidence: float, target_size):
    """(warp function image [1, C, H_s, W_s] -> [1, C, H_t, W_t], control points used) for tps / homography."""
    source, target = confident_matches(dense, min_confidence=min_confidence, max_points=MAX_CONTROL_POINTS)
    if source.shape[0] < MIN_HOMOGRAPHY_POINTS:
        raise DiTFInputError(
            f"only {source.shape[0]} dense matches reach min_confidence {min_confidence:g} ({method} needs at least "
            f"{MIN_HOMOGRAPHY_POINTS} for its RANSAC fit); lower min_confidence, or use method flow"
        )
    threshold = max(dense.target_mapping.cell_size)  # one feature cell: the matches' own precision
    width, height = target_size
    homography, inliers = fit_homography(source, target, threshold=threshold)
    if method == "homography":
        return (lambda pixels: warp_homography(pixels, homography, width=width, height=height)), int(inliers.sum())
    if int(inliers.sum()) < MIN_TPS_POINTS:
        raise DiTFInputError(
            f"only {int(inliers.sum())} of {source.shape[0]} confident matches agree with a RANSAC homography; tps "
            f"needs {MIN_TPS_POINTS}: lower min_confidence, or use method flow"
        )
    src, trg = source[inliers], target[inliers]
    return (lambda pixels: warp_tps(pixels, src, trg, width=width, height=height)), int(src.shape[0])


# --- LATENT output -----------------------------------------------------------------------------------------------
class MissingLatent(dict):
    """The LATENT output when no VAE is connected: any node that reads it (e.g. KSampler reading ``["samples"]``)
    stops with ``message`` instead of an obscure KeyError. Copies stay missing."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def __missing__(self, key):
        raise DiTFInputError(self.message)

    def copy(self) -> MissingLatent:
        return MissingLatent(self.message)


NO_VAE_MESSAGE = (
    "the LATENT output of Warp / Appearance Transfer (DiTF) needs a VAE: connect one to its vae input (the VAE of the "
    "model you sample with) to get the warped image encoded, or take the IMAGE output"
)


def output_is_linked(graph, node_id, index: int) -> bool | None:
    """Whether output ``index`` of node ``node_id`` feeds any input in ``graph`` (a ComfyUI DynamicPrompt or an
    API-format prompt dict); None when unknown (no graph or no id, e.g. a direct call)."""
    if graph is None or node_id is None:
        return None
    if hasattr(graph, "all_node_ids"):
        nodes = (graph.get_node(key) for key in graph.all_node_ids())
    elif isinstance(graph, dict):
        nodes = graph.values()
    else:
        return None
    wanted = str(node_id)
    for node in nodes:
        for value in (node or {}).get("inputs", {}).values():
            if isinstance(value, (list, tuple)) and len(value) == 2 and str(value[0]) == wanted and value[1] == index:
                return True
    return False
