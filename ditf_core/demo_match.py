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
from .visualize import labelled_grid
from .warping import confident_matches, fit_homography, transfer_appearance, warp_homography, warp_tps, warp_to_target

PCK_ALPHA = 0.10


def run_match_demo(out: Path, scene_a: Image.Image, scene_b: Image.Image, truth: np.ndarray, features_a, features_b):
    """Match A -> B, write ``matches.png`` and ``warps.png``, return (summary lines, numbers for summary.json).

    truth: the 3x3 matrix taking A pixels to B pixels.
    """
    points = keypoint_grid(scene_a.size)
    expected = _apply(truth, points)
    threshold = PCK_ALPHA * max(scene_b.size)
    numbers, lines = {}, []
    for mode in ("fast", "exact"):
        matches = match_points(features_a, features_b, points, mode=mode)
        error = (matches.points[0] - expected).norm(dim=-1)
        numbers[mode] = {"mean_error_px": round(float(error.mean()), 2), "pck@0.10": float((error <= threshold).float().mean())}
        if mode == "fast":
            draw_matches(scene_a, scene_b, points, matches.points[0]).save(out / "matches.png")
    lines.append(
        f"  keypoints A->B ({len(points)} points, truth known): "
        + ", ".join(f"{m} mean error {v['mean_error_px']} px, PCK@0.10 {v['pck@0.10']:.2f}" for m, v in numbers.items())
    )

    dense = match_dense(features_a, features_b)
    image_a, image_b = pil_to_tensor(scene_a)[None], pil_to_tensor(scene_b)[None]
    flow = warp_to_target(image_a, dense)
    source, target = confident_matches(dense, max_points=64)
    rows = [("B, and A warped onto B's layout by the dense flow", [scene_b, tensor_to_pil(flow[0])])]
    numbers["confident_cells"] = int(len(source))
    if len(source) >= 5:
        homography, inliers = fit_homography(source, target, threshold=max(features_b.mapping.cell_size))
        rows.append(("RANSAC homography from mutual nearest neighbours; thin-plate spline through its inliers", [
            tensor_to_pil(warp_homography(image_a, homography, scene_b.size)[0]),
            tensor_to_pil(warp_tps(image_a, source[inliers], target[inliers], scene_b.size)[0]),
        ]))
        corners = torch.tensor([[0.0, 0.0], [scene_a.width - 1.0, 0.0], [0.0, scene_a.height - 1.0],
                                [scene_a.width - 1.0, scene_a.height - 1.0]])
        corner_error = (_apply(homography.numpy(), corners) - _apply(truth, corners)).norm(dim=-1).mean()
        numbers["homography"] = {"inliers": int(inliers.sum()), "corner_error_px": round(float(corner_error), 1)}
        lines.append(f"  dense: {len(source)} mutual-nearest cells used; homography: {int(inliers.sum())} "
                     f"inliers, corners off by {corner_error:.1f} px on average")
    rows.append(("appearance transfer: B's layout with A's colours", [tensor_to_pil(transfer_appearance(image_a, image_b, dense)[0])]))
    labelled_grid(rows).save(out / "warps.png")
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
