"""Video metrics as the benchmarks' own code computes them (numpy; no OpenCV / scikit-image needed).

DAVIS (``davis2017-evaluation``, semi-supervised):

* J (:func:`region_similarity`): IoU of the object's masks, void pixels excluded; 1 when both are empty.
* F (:func:`boundary_f_measure`): boundaries as ``_seg2bmap`` draws them (1-px, offset half a pixel towards the
  origin); each boundary is dilated by a disk of radius ``ceil(0.008 * image diagonal)`` px (skimage ``disk``,
  ``cv2.dilate``); precision = predicted boundary pixels within the dilated true boundary / predicted ones, recall
  the converse; F = 2PR / (P + R), with the reference's conventions for empty boundaries.
* :func:`sequence_statistics`: mean, recall (fraction > 0.5) and decay of a per-frame curve (``db_statistics``).
  The first and last frame are excluded by the caller (:mod:`ditf_core.eval.davis`); J&F = mean over objects of
  the per-object means of J and F.

TAP-Vid (tapnet's ``compute_tapvid_metrics``), :func:`tapvid_metrics`: positions in 256 x 256 raster space;
for thresholds 1, 2, 4, 8, 16 px the fraction of ground-truth-visible points within the threshold (< thr,
occlusion predictions ignored) and the Jaccard = true positives / (ground-truth visible + false positives);
occlusion accuracy; averages over thresholds. Query mode "first" evaluates the frames after each query frame,
"strided" every frame but the query frame.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

BOUNDARY_THRESHOLD = 0.008
TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)


def region_similarity(truth: np.ndarray, prediction: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of one object in one frame: masks [H, W] (bool-like), void [H, W] pixels ignored."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    keep = np.ones_like(truth) if void is None else ~void.astype(bool)
    union = np.sum((truth | prediction) & keep)
    if np.isclose(union, 0):
        return 1.0
    return float(np.sum(truth & prediction & keep) / union)


def boundary_f_measure(truth: np.ndarray, prediction: np.ndarray, void: np.ndarray | None = None,
                       bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """F of one object in one frame (``davis2017-evaluation``'s ``f_measure``)."""
    keep = np.ones(truth.shape, dtype=bool) if void is None else ~void.astype(bool)
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(truth.shape))
    predicted_boundary = boundary_map(prediction.astype(bool) & keep)
    true_boundary = boundary_map(truth.astype(bool) & keep)
    predicted_near = dilate(predicted_boundary, int(radius))
    true_near = dilate(true_boundary, int(radius))
    n_predicted, n_true = predicted_boundary.sum(), true_boundary.sum()
    if n_predicted == 0 and n_true > 0:
        precision, recall = 1.0, 0.0
    elif n_predicted > 0 and n_true == 0:
        precision, recall = 0.0, 1.0
    elif n_predicted == 0 and n_true == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.sum(predicted_boundary & true_near) / float(n_predicted)
        recall = np.sum(true_boundary & predicted_near) / float(n_true)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """``_seg2bmap`` at the mask's own size: pixels whose right, lower or lower-right neighbour differs."""
    seg = mask.astype(bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: the pixels of a (2r+1)^2 square with x^2 + y^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by :func:`disk` (``cv2.dilate``: pixels outside the image never count)."""
    out = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    for dy, dx in zip(*np.nonzero(disk(radius))):
        dy, dx = dy - radius, dx - radius
        out[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] |= (
            mask[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)])
    return out


def sequence_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values (``db_statistics``; NaN frames ignored)."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():  # as the reference: an all-NaN (unscored) curve gives NaN quietly
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                   pred_occluded: np.ndarray, pred_tracks: np.ndarray, query_mode: str) -> dict[str, float]:
    """TAP-Vid metrics of one video. query_points [N, 3] (t, y, x); occluded [N, T] bool; tracks [N, T, 2]
    (x, y), all in 256 x 256 raster coordinates. Returns occlusion_accuracy, pts_within_{1..16}, jaccard_{1..16},
    average_jaccard, average_pts_within_thresh (fractions in [0, 1])."""
    frames = gt_tracks.shape[1]
    eye = np.eye(frames, dtype=np.int32)
    if query_mode == "first":
        query_frame_to_eval_frames = np.cumsum(eye, axis=1) - eye
    elif query_mode == "strided":
        query_frame_to_eval_frames = 1 - eye
    else:
        raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")
    query_frame = np.round(query_points[..., 0]).astype(np.int32)
    evaluation = query_frame_to_eval_frames[query_frame] > 0
    metrics = {"occlusion_accuracy": np.sum((pred_occluded == gt_occluded) & evaluation) / np.sum(evaluation)}
    visible, pred_visible = ~gt_occluded, ~pred_occluded
    within_all, jaccard_all = [], []
    for threshold in TAPVID_THRESHOLDS:
        within = np.sum(np.square(pred_tracks - gt_tracks), axis=-1) < np.square(threshold)
        correct = within & visible
        fraction = np.sum(correct & evaluation) / np.sum(visible & evaluation)
        true_positives = np.sum(correct & pred_visible & evaluation)
        false_positives = np.sum((((~visible) & pred_visible) | ((~within) & pred_visible)) & evaluation)
        jaccard = true_positives / (np.sum(visible & evaluation) + false_positives)
        metrics[f"pts_within_{threshold}"], metrics[f"jaccard_{threshold}"] = fraction, jaccard
        within_all.append(fraction)
        jaccard_all.append(jaccard)
    metrics["average_jaccard"] = np.mean(jaccard_all)
    metrics["average_pts_within_thresh"] = np.mean(within_all)
    return {name: float(value) for name, value in metrics.items()}
