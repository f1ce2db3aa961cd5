"""The demo's correspondence part: keypoints and dense matches between the sample scenes, scored against the
known transform, and the warps they drive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import pil_to_tensor, tensor_to_pil
from .matching import match_dense, match_points
from .matching.draw import draw_matches
from .outputs import save_image
from .visualize import captioned_grid
from .warping import confident_matches, fit_homography, transfer_appearance, warp_homography, warp_tps, warp_to_target

PCK_ALPHA = 0.10
MODES_SHOWN = ("fast", "exact")
MARKER_RADIUS = 6  # px on the 384 x 288 scenes


def run_match_demo(out: Path, scene_a: Image.Image, scene_b: Image.Image, truth: np.ndarray, features_a, features_b,
                   *, model_note: str = ""):
    """Match A -> B, write ``matches.png`` and ``warps.png``, return (summary lines, numbers for summary.json).

    truth: the 3x3 matrix taking A pixels to B pixels. model_note: said under the pictures' titles (e.g. that the
    model has random weights).
    """
    points = keypoint_grid(scene_a.size)
    expected = _apply(truth, points)
    threshold = PCK_ALPHA * max(scene_b.size)
    numbers, rows = {}, []
    for mode in MODES_SHOWN:
        found = match_points(features_a, features_b, points, mode=mode).points[0]
        error = (found - expected).norm(dim=-1)
        correct = error <= threshold
        numbers[mode] = {"mean_error_px": round(float(error.mean()), 2), "pck@0.10": float(correct.float().mean())}
        picture = draw_matches(scene_a, scene_b, points, found, expected=expected, correct=correct, lines=False,
                               radius=MARKER_RADIUS)
        rows.append((f"mode {mode}: {int(correct.sum())} of {len(points)} matches correct at PCK@{PCK_ALPHA:.2f} "
                     f"(mean error {float(error.mean()):.0f} px)",
                     [(f"left: A with {len(points)} keypoints; right: B with the match of each", picture)]))
    save_image(captioned_grid(rows, title=f"Keypoint matches A -> B{model_note}", footer=[
        "Each keypoint of A and its match in B share a colour. Ring around a match: green = correct (within "
        f"{PCK_ALPHA:.2f} x {max(scene_b.size)} px = {threshold:.0f} px of the true position), red = incorrect (a "
        "red line leads to the true position). Cross: the true position (B is A rotated, scaled and shifted by a "
        "known transform).",
    ]), out / "matches.png")
    lines = [f"  keypoints A->B ({len(points)} points, truth known): " + ", ".join(
        f"{m} mean error {v['mean_error_px']} px, PCK@0.10 {v['pck@0.10']:.2f}" for m, v in numbers.items())]

    dense = match_dense(features_a, features_b)
    image_a, image_b = pil_to_tensor(scene_a)[None], pil_to_tensor(scene_b)[None]
    width, height = scene_b.size
    source, target = confident_matches(dense, max_points=64)
    numbers["confident_cells"] = int(len(source))
    rows = [("Dense matches: every feature cell of B finds its best match in A", [
        ("B, the target", scene_b),
        ("A warped onto B's layout by the dense flow", tensor_to_pil(warp_to_target(image_a, dense)[0])),
    ])]
    if len(source) >= 5:
        homography, inliers = fit_homography(source, target, threshold=max(features_b.mapping.cell_size))
        kept = int(inliers.sum())
        rows.append((f"From the {len(source)} confident matches (mutual nearest neighbours)", [
            (f"A warped by the RANSAC homography ({kept} inliers)",
             tensor_to_pil(warp_homography(image_a, homography, width=width, height=height)[0])),
            (f"A warped by a thin-plate spline through those {kept} inliers",
             tensor_to_pil(warp_tps(image_a, source[inliers], target[inliers], width=width, height=height)[0])),
        ]))
        corners = torch.tensor([[0.0, 0.0], [scene_a.width - 1.0, 0.0], [0.0, scene_a.height - 1.0],
                                [scene_a.width - 1.0, scene_a.height - 1.0]])
        corner_error = (_apply(homography.numpy(), corners) - _apply(truth, corners)).norm(dim=-1).mean()
        numbers["homography"] = {"inliers": kept, "corner_error_px": round(float(corner_error), 1)}
        lines.append(f"  dense: {len(source)} mutual-nearest cells used; homography: {kept} "
                     f"inliers, corners off by {corner_error:.1f} px on average")
    rows.append(("Appearance transfer", [
        ("B's layout with A's colours, blended by match confidence",
         tensor_to_pil(transfer_appearance(image_a, image_b, dense)[0])),
        ("A, the source", scene_a),
    ]))
    save_image(captioned_grid(rows, title=f"Warps driven by the matches A -> B{model_note}"), out / "warps.png")
    return lines, numbers


def keypoint_grid(size: tuple[int, int], columns: int = 5, rows: int = 4) -> torch.Tensor:
    """[rows * columns, 2] pixels on an even grid inside the central 60% of an image of ``size`` (width, height)."""
    width, height = size
    xs = torch.linspace(0.2 * width, 0.8 * width, columns)
    ys = torch.linspace(0.2 * height, 0.8 * height, rows)
    return torch.cartesian_prod(ys, xs).flip(-1).round()


def _apply(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    homogeneous = torch.cat([points, torch.ones(len(points), 1)], dim=1).double()
    mapped = homogeneous @ torch.as_tensor(matrix, dtype=torch.float64).T
    return (mapped[:, :2] / mapped[:, 2:]).float()
