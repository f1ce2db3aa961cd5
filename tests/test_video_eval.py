"""Video evaluation: J, F (boundary tolerance) and TAP-Vid metrics against hand computations; the DAVIS and
TAP-Vid harnesses on synthetic datasets written here; the safe TAP-Vid reader. The commands: test_cli_video.py."""

from __future__ import annotations

import json
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from video_clips import Clip, SurfaceExtractor

from ditf_core.errors import DiTFInputError
from ditf_core.eval.davis import evaluate_davis, format_table, read_davis
from ditf_core.eval.tapvid import SafeUnpickler, evaluate_tapvid, load_tapvid, sample_queries, save_npz
from ditf_core.eval.video_metrics import (
    boundary_f_measure,
    boundary_map,
    region_similarity,
    sequence_statistics,
    tapvid_metrics,
)
from ditf_core.images import tensor_to_pil
from ditf_core.video import label_map_image


def rectangle(shape, top, left, height, width) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


# --- J and F -----------------------------------------------------------------------------------------------------
def test_region_similarity_by_hand():
    truth = rectangle((100, 150), 20, 30, 20, 20)
    assert region_similarity(truth, rectangle((100, 150), 20, 33, 20, 20)) == pytest.approx(17 / 23)  # 340 / 460
    assert region_similarity(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both empty
    void = rectangle((100, 150), 0, 0, 100, 33)  # hides the 60 pixels only the truth has
    assert region_similarity(truth, rectangle((100, 150), 20, 33, 20, 20), void) == pytest.approx(340 / 400)


def test_boundaries_are_the_davis_rings():
    """_seg2bmap marks, for a rectangle, the outline of the rectangle grown one pixel up and left."""
    boundary = boundary_map(rectangle((8, 9), 2, 3, 3, 4))
    expected = np.zeros((8, 9), dtype=bool)
    expected[1:5, 2:7] = True
    expected[2:4, 3:6] = False
    assert np.array_equal(boundary, expected)


def test_boundary_f_measure_by_hand_with_the_diagonal_tolerance():
    """A 20 x 20 square and its copy shifted 3 px right. Both boundaries are 21 x 21 rings of 80 pixels.
    In a 150 x 100 image the tolerance is ceil(0.008 * 180.3) = 2 px: of the shifted ring, its far side (21 px)
    and the middle of its near side (rows 3..17 from the top: 15 px) are more than 2 px from the true ring, so
    precision = recall = (80 - 36) / 80 and F = 0.55. In a 300 x 200 image the tolerance is ceil(2.88) = 3 px:
    every pixel is matched and F = 1. A 2 px shift is within 2 px: F = 1."""
    truth, shifted = rectangle((100, 150), 20, 30, 20, 20), rectangle((100, 150), 20, 33, 20, 20)
    assert boundary_f_measure(truth, shifted) == pytest.approx(0.55)
    assert boundary_f_measure(truth, rectangle((100, 150), 20, 32, 20, 20)) == 1.0
    big_truth, big_shifted = rectangle((200, 300), 20, 30, 20, 20), rectangle((200, 300), 20, 33, 20, 20)
    assert boundary_f_measure(big_truth, big_shifted) == 1.0
    assert boundary_f_measure(truth, np.zeros_like(truth)) == 0.0  # nothing predicted: P 1, R 0
    assert boundary_f_measure(np.zeros_like(truth), np.zeros_like(truth)) == 1.0


def test_sequence_statistics_by_hand():
    """8 frames: bins from ids round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7] -> [0:3], [2:5], [4:6], [5:8]."""
    values = np.array([1.0, 0.9, 0.8, 0.4, 0.6, 0.2, 0.3, 0.1])
    mean, recall, decay = sequence_statistics(values)
    assert mean == pytest.approx(4.3 / 8)
    assert recall == pytest.approx(4 / 8)  # 1.0, 0.9, 0.8, 0.6 are above 0.5
    assert decay == pytest.approx((1.0 + 0.9 + 0.8) / 3 - (0.2 + 0.3 + 0.1) / 3)


# --- TAP-Vid metrics -----------------------------------------------------------------------------------------------
def tapvid_case():
    """Two points, four frames, in 256-px space. Point 0 (query frame 0) stays at (10, 10), predicted with errors
    0, 3 and 10 px on frames 1-3. Point 1 (query frame 1) sits at (50, 50), hidden on frame 3; predicted 2 px off
    on frame 2 and (wrongly) visible on frame 3."""
    truth = np.array([[[10, 10]] * 4, [[50, 50]] * 4], dtype=np.float64)
    occluded = np.array([[False] * 4, [False, False, False, True]])
    predicted = truth.copy()
    predicted[0, 2, 0] += 3
    predicted[0, 3, 1] += 10
    predicted[1, 2, 0] += 2
    predicted[1, 0] = [200, 200]  # before point 1's query frame: never evaluated in "first" mode
    queries = np.array([[0, 10, 10], [1, 50, 50]], dtype=np.float64)
    return queries, occluded, truth, np.zeros_like(occluded), predicted


def test_tapvid_metrics_by_hand_first_mode():
    """Evaluated (after each query frame): p0 frames 1-3, p1 frames 2-3; ground truth visible there: 4 points with
    errors 0, 3, 10, 2 px. Within (strictly below) 1, 2, 4, 8, 16 px: 1, 1, 3, 3, 4 of 4. Jaccard: true positives
    / (4 visible + false positives), false positives = predicted visible but too far, plus p1 frame 3 (hidden
    but predicted visible): 1/8, 1/8, 3/6, 3/6, 4/5. Occlusion accuracy: 4 of 5."""
    metrics = tapvid_metrics(*tapvid_case(), "first")
    within = [Fraction(1, 4), Fraction(1, 4), Fraction(3, 4), Fraction(3, 4), Fraction(1)]
    jaccard = [Fraction(1, 8), Fraction(1, 8), Fraction(3, 6), Fraction(3, 6), Fraction(4, 5)]
    for threshold, w, j in zip((1, 2, 4, 8, 16), within, jaccard):
        assert metrics[f"pts_within_{threshold}"] == pytest.approx(float(w))
        assert metrics[f"jaccard_{threshold}"] == pytest.approx(float(j))
    assert metrics["occlusion_accuracy"] == pytest.approx(4 / 5)
    assert metrics["average_pts_within_thresh"] == pytest.approx(float(sum(within) / 5))
    assert metrics["average_jaccard"] == pytest.approx(float(sum(jaccard) / 5))


def test_tapvid_metrics_by_hand_strided_mode():
    """Strided: every frame but the query frame. p1 frame 0 (visible, predicted 212 px off) joins: 5 visible
    points, within 1, 1, 3, 3, 4 of 5; one more false positive at every threshold; occlusion accuracy 5 of 6."""
    metrics = tapvid_metrics(*tapvid_case(), "strided")
    assert [metrics[f"pts_within_{t}"] for t in (1, 2, 4, 8, 16)] == pytest.approx([0.2, 0.2, 0.6, 0.6, 0.8])
    assert [metrics[f"jaccard_{t}"] for t in (1, 2, 4, 8, 16)] == pytest.approx([1 / 10, 1 / 10, 3 / 8, 3 / 8, 4 / 7])
    assert metrics["occlusion_accuracy"] == pytest.approx(5 / 6)


# --- the DAVIS harness ---------------------------------------------------------------------------------------------
DAVIS_CLIP = Clip(frames=6, width=150, height=100, size=20, start=(50, 40), velocity=(2, 2), bar=(10, 18))


def write_davis(root: Path, shifted_frame: int = 2) -> None:
    """A DAVIS-layout folder with one sequence of the synthetic clip (PNG frames). The annotation of frame 2 is the
    square shifted 3 px right (so the exact prediction scores J 17/23, F 0.55 there); the last annotation is
    empty (the last frame is not scored)."""
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("squares\n")
    frames, annotations = root / "JPEGImages" / "480p" / "squares", root / "Annotations" / "480p" / "squares"
    frames.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for t in range(DAVIS_CLIP.frames):
        tensor_to_pil(DAVIS_CLIP.frame(t)).save(frames / f"{t:05d}.png")
        mask = DAVIS_CLIP.mask(t)
        if t == shifted_frame:
            mask = torch.roll(mask, 3, dims=1)
        if t == DAVIS_CLIP.frames - 1:
            mask = torch.zeros_like(mask)
        label_map_image(mask).save(annotations / f"{t:05d}.png")


def test_davis_harness_scores_the_propagation_like_the_hand_computation(tmp_path):
    write_davis(tmp_path / "DAVIS")
    sequences = read_davis(tmp_path / "DAVIS")
    extractor = SurfaceExtractor(cell=2)
    result = evaluate_davis(sequences, extractor, output=tmp_path / "out", save_masks=True)
    (obj,) = result["sequences"][0]["objects"]
    assert obj["J_per_frame"] == pytest.approx([1, 17 / 23, 1, 1]) and obj["F_per_frame"] == pytest.approx([1, 0.55, 1, 1])
    summary = result["summary"]
    assert summary["J-Mean"] == pytest.approx((3 + 17 / 23) / 4) and summary["F-Mean"] == pytest.approx(3.55 / 4)
    assert summary["J&F-Mean"] == pytest.approx(((3 + 17 / 23) / 4 + 3.55 / 4) / 2)
    assert "squares_1" in format_table(result)
    written = np.array(Image.open(tmp_path / "out" / "squares" / "00003.png"))
    assert np.array_equal(written, DAVIS_CLIP.mask(3).numpy())  # the predicted masks, in DAVIS's palette
    calls = extractor.calls
    again = evaluate_davis(sequences, extractor, output=tmp_path / "out")  # resumes from <output>/squares.json
    assert extractor.calls == calls and again["summary"] == summary


def test_davis_reader_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageSets/2017/val.txt"):
        read_davis(tmp_path)
    write_davis(tmp_path / "DAVIS")
    (tmp_path / "DAVIS" / "Annotations" / "480p" / "squares" / "00004.png").unlink()
    with pytest.raises(ValueError, match="6 frames .* but 5 annotations"):
        read_davis(tmp_path / "DAVIS")


# --- TAP-Vid: the safe reader and the harness ------------------------------------------------------------------------
TAPVID_CLIP = Clip(frames=12, width=64, height=64, start=(8, 12), velocity=(2, 1), bar=(28, 36))


def tapvid_dataset() -> dict:
    """The synthetic clip as a TAP-Vid video: uint8 frames, normalised points, occlusion flags."""
    video = (TAPVID_CLIP.video().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    tracks = [TAPVID_CLIP.track(local) for local in ((2, 2), (12, 4), (8, 8))]
    points = np.stack([((xy + 0.5) / 64).numpy() for xy, _ in tracks]).astype(np.float32)
    occluded = np.stack([(~visible).numpy() for _, visible in tracks])
    return {"squares": {"video": video, "points": points, "occluded": occluded}}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_release_pickle_is_read_without_running_anything(tmp_path, protocol):
    data = tapvid_dataset()
    path = tmp_path / "tapvid_davis.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_tapvid(path)
    for key in ("video", "points", "occluded"):
        assert np.array_equal(loaded["squares"][key], data["squares"][key])
    npz = save_npz(loaded, tmp_path / "tapvid_davis.npz")
    assert np.array_equal(load_tapvid(npz)["squares"]["points"], data["squares"]["points"])


class Payload:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


def test_the_reader_refuses_any_other_global(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"squares": Payload()}))
    with pytest.raises(DiTFInputError, match="not a readable TAP-Vid file \\(refusing to load (posix|os|nt).system"):
        load_tapvid(path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.eval"):
        SafeUnpickler(__import__("io").BytesIO(b"cbuiltins\neval\n.")).load()


def test_queries_are_sampled_as_tapnet_does():
    points = np.random.default_rng(0).random((3, 11, 2))
    occluded = np.zeros((3, 11), dtype=bool)
    occluded[0, :3] = True
    occluded[1, 5] = True
    occluded[2] = True  # never visible: no query
    first = sample_queries(points, occluded, "first")
    assert first["track"].tolist() == [0, 1] and first["query_points"][:, 0].tolist() == [3, 0]
    assert np.allclose(first["query_points"][0, 1:], points[0, 3, ::-1] * 256)  # (t, y, x)
    strided = sample_queries(points, occluded, "strided")
    assert strided["query_points"][:, 0].tolist() == [0, 5, 10, 10] and strided["track"].tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("mode", ["first", "strided"])
def test_tapvid_harness_on_the_synthetic_clip(mode):
    result = evaluate_tapvid(tapvid_dataset(), SurfaceExtractor(cell=1), mode=mode)
    metrics = result["summary"]
    print(f"TAP-Vid ({mode}) on the synthetic clip: {json.dumps({k: round(v, 3) for k, v in metrics.items()})}")
    assert metrics["occlusion_accuracy"] == 1.0 and metrics["average_jaccard"] == 1.0  # every point within 1 px
