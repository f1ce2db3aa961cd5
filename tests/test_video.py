"""The video engines on synthetic clips with known answers: mask propagation (J), point tracks (px error,
occlusion), the windowed affinity against DINO's dense-then-masked reference, memory flat in clip length, bad
input, the feature stream."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from video_clips import Clip, SurfaceExtractor

from ditf_core.errors import DiTFInputError
from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping
from ditf_core.video import (
    LabelPropagator,
    PointTracker,
    PropagationSettings,
    TrackSettings,
    consistent_discard,
    labels_to_grid,
    labels_to_image,
    propagate_clip,
    propagate_labels,
    stream_features,
    track_clip,
    track_queries,
    video_defaults,
    window_affinity,
)
from ditf_core.video.reference import dense_masked_affinity, propagate_labels_dense

PROPAGATION_CLIP = Clip()  # the square moves 2 px right and down per frame and slides under the bar
TRACKING_CLIP = Clip(frames=20, start=(8, 12), velocity=(2, 1), bar=(28, 36))
TRACKED = ((2, 2), (12, 4), (8, 8), (4, 13))  # points on the square (its own coordinates)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a > 0) & (b > 0)).sum() / ((a > 0) | (b > 0)).sum().clamp_min(1))


# --- propagation -----------------------------------------------------------------------------------------------
def test_propagation_reproduces_the_moving_partly_hidden_mask():
    clip = PROPAGATION_CLIP
    extractor = SurfaceExtractor(cell=2)
    labels = list(propagate_clip(extractor, clip.video(), clip.mask(0)))
    scores = [jaccard(labels[t], clip.mask(t)) for t in range(clip.frames)]
    print("synthetic clip J per frame:", [round(s, 3) for s in scores])
    assert min(scores) >= 0.9
    assert clip.mask(clip.frames - 1).sum() < clip.mask(0).sum()  # the bar really hides part of the square
    assert extractor.frames_seen == clip.frames  # every frame extracted once


def test_keyframes_restart_propagation_from_their_mask():
    clip = PROPAGATION_CLIP
    wrong = torch.zeros(clip.height, clip.width, dtype=torch.long)
    wrong[:8, :8] = 1  # a keyframe that says the object is now in the top-left corner
    labels = list(propagate_clip(SurfaceExtractor(cell=2), clip.video(), clip.mask(0), keyframes={6: wrong}))
    assert jaccard(labels[5], clip.mask(5)) >= 0.9
    assert torch.equal(labels[6], wrong)
    assert jaccard(labels[7], wrong) >= 0.9 and jaccard(labels[7], clip.mask(7)) == 0  # follows the keyframe only


def test_memory_is_bounded_by_the_context_not_the_clip_length():
    clip = Clip(frames=4, width=32, height=24, size=8, start=(4, 4), velocity=(4, 0), bar=(20, 24))
    frames = clip.video()
    peaks = {}
    for length in (50, 200):
        propagator = LabelPropagator(PropagationSettings(context=7, radius=2))
        looped = frames[torch.arange(length) % len(frames)]
        for _ in propagate_clip(SurfaceExtractor(cell=4), looped, clip.mask(0), propagator=propagator):
            pass
        peaks[length] = propagator.peak_bytes
        assert len(propagator.queue) == 7
    print(f"propagator peak held bytes: 50 frames {peaks[50]}, 200 frames {peaks[200]}")
    assert peaks[200] <= 1.2 * peaks[50]


def test_labels_go_to_the_grid_and_back_like_the_protocol():
    mapping = PixelMapping((10, 6), (80, 48), (5, 3))
    features = DiTFeatures(torch.zeros(1, 4, 3, 5), mapping)
    label_map = torch.zeros(6, 10, dtype=torch.long)
    label_map[2:4, 4:6] = 1  # PIL NEAREST samples pixel floor((i + 0.5) * 2) = 2i + 1
    grid = labels_to_grid(label_map, features, 2)
    expected = torch.zeros(3, 5)
    expected[1, 2] = 1
    assert torch.equal(grid[1], expected) and torch.equal(grid[0], 1 - expected)
    back = labels_to_image(grid, features)  # bilinear x16, min-max, argmax, nearest to 10 x 6
    assert back.shape == (6, 10) and back[2:4, 4:6].eq(1).all() and back.sum() == 4


# --- windowed affinity == dense-then-masked ---------------------------------------------------------------------
def dyadic_unit_features(n: int, h: int, w: int, channels: int = 16, seed: int = 0) -> torch.Tensor:
    """Unit vectors with four entries of +-0.5: every dot product is a multiple of 1/4, exact in any order."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, channels, h, w)
    for i, y, x in itertools.product(range(n), range(h), range(w)):
        picked = torch.randperm(channels, generator=generator)[:4]
        signs = torch.randint(0, 2, (4,), generator=generator) * 2 - 1
        out[i, picked, y, x] = 0.5 * signs.float()
    return out


@pytest.mark.parametrize("radius, tile", [(1, 1), (2, 3), (2, 8), (4, 4), (12, 8)])
def test_windowed_affinity_equals_the_dense_masked_reference_exactly(radius, tile):
    context = dyadic_unit_features(3, 9, 11)
    query = dyadic_unit_features(1, 9, 11, seed=1)[0]
    values, keys, valid = window_affinity(query, context, radius=radius, temperature=0.1, tile=tile)
    rebuilt = torch.zeros(3, 99, 99)
    rows, slots = valid.nonzero(as_tuple=True)
    rebuilt[:, rows, keys[rows, slots]] = values[:, rows, slots]
    assert torch.equal(rebuilt, dense_masked_affinity(query, context, radius=radius, temperature=0.1))
    assert torch.equal(values[:, ~valid], torch.zeros_like(values[:, ~valid]))  # outside the frame: 0, as masked


@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_propagated_labels_equal_the_reference(top_k):
    context = dyadic_unit_features(4, 9, 11)  # many exact ties: the reference keeps every tie of the k-th value
    query = dyadic_unit_features(1, 9, 11, seed=1)[0]
    labels = torch.rand(4, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    ours = propagate_labels(query, context, labels, radius=2, top_k=top_k, temperature=0.1, tile=4)
    reference = propagate_labels_dense(query, context, labels, radius=2, top_k=top_k, temperature=0.1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    generator = torch.Generator().manual_seed(3)
    context = F.normalize(torch.randn(8, 32, 12, 16, generator=generator), dim=1)
    query = F.normalize(torch.randn(32, 12, 16, generator=generator), dim=0)
    labels = torch.rand(8, 2, 12, 16, generator=generator)
    torch.testing.assert_close(propagate_labels(query, context, labels, radius=3, top_k=top_k, temperature=0.1),
                               propagate_labels_dense(query, context, labels, radius=3, top_k=top_k, temperature=0.1),
                               rtol=0, atol=1e-6)


# --- tracking --------------------------------------------------------------------------------------------------
def tracked_points(clip: Clip) -> torch.Tensor:
    return torch.tensor([[clip.start[0] + x, clip.start[1] + y] for x, y in TRACKED], dtype=torch.float32)


def test_tracks_stay_within_a_pixel_while_visible_and_are_occluded_while_hidden():
    clip = TRACKING_CLIP
    steps = list(track_clip(SurfaceExtractor(cell=1), clip.video(), tracked_points(clip)))
    errors = []
    for k, local in enumerate(TRACKED):
        truth, visible = clip.track(local)
        predicted = torch.stack([step.xy[k] for step in steps])
        predicted_visible = torch.stack([step.visible[k] for step in steps])
        assert (~visible).any() and visible[-1]  # each point hides behind the bar and comes back
        assert torch.equal(predicted_visible, visible), local
        errors.append((predicted - truth).norm(dim=1)[visible])
    errors = torch.cat(errors)
    print(f"synthetic tracks: max error while visible {float(errors.max()):.3f} px, mean {float(errors.mean()):.3f} px")
    assert errors.max() <= 1.0


def test_queries_on_later_frames_are_tracked_both_ways():
    clip = TRACKING_CLIP
    extractor = SurfaceExtractor(cell=1)
    video = clip.video()
    truth, visible = clip.track((8, 8))
    queries = torch.tensor([[0, *truth[0].tolist()], [15, *truth[15].tolist()]])
    tracks, predicted_visible = track_queries(lambda t: extractor(video[t : t + 1]), clip.frames, queries)
    for row in range(2):
        assert torch.equal(predicted_visible[row], visible)
        assert (tracks[row] - truth).norm(dim=1)[visible].max() <= 1.0
    assert extractor.calls == 2 * clip.frames  # one forward and one backward pass


def test_the_backward_check_rejects_a_match_that_does_not_lead_back():
    """In the next frame the query point (3, 3) is gone; its best match, cell (6, 1), resembles it (cosine 0.6) but
    resembles the query frame's cell (1, 6) more (0.8): from there the way back misses by far."""
    mapping = PixelMapping((8, 8), (128, 128), (8, 8))
    first = F.normalize(torch.randn(1, 64, 8, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    second = first.clone()
    second[0, :, 3, 3] = first[0, :, 6, 6]
    lookalike = 0.6 * first[0, :, 3, 3] + 0.8 * first[0, :, 6, 1]
    second[0, :, 1, 6] = lookalike / lookalike.norm()
    tracker = PointTracker(DiTFeatures(first, mapping), [[3, 3], [5, 1]], TrackSettings(threshold=0.5))
    step = tracker.step(DiTFeatures(second, mapping))
    assert step.visible.tolist() == [False, True]
    assert step.score[0] >= 0.5  # similar enough: it is the way back that fails


# --- the stream and the defaults --------------------------------------------------------------------------------
def test_the_stream_extracts_micro_batches_and_yields_single_frames():
    clip = Clip(frames=5)
    extractor = SurfaceExtractor(cell=2)
    frames = list(stream_features(extractor, clip.video(), micro_batch=2))
    assert extractor.calls == 3 and [f.batch for f in frames] == [1] * 5
    assert torch.equal(frames[3].features, extractor(clip.video()[3:4]).features)


def test_discard_auto_is_chosen_once_for_the_whole_clip():
    asked = []

    def extract(frames, discard):
        asked.append(discard)
        channels = (len(asked),) if discard == "auto" else tuple(discard)  # each batch would pick its own
        return DiTFeatures(torch.zeros(frames.shape[0], 4, 2, 2), PixelMapping((8, 8), (32, 32), (2, 2)),
                           discarded=channels)

    source = consistent_discard(extract, "auto")
    assert [source(torch.zeros(1, 3, 8, 8)).discarded for _ in range(3)] == [(1,), (1,), (1,)]
    assert asked == ["auto", [1], [1]]


def test_video_defaults_are_ditf_davis_for_flux_and_the_family_defaults_otherwise():
    from ditf_core.families import FamilyDefaults

    image = FamilyDefaults(layer=28, t=0.26, resolution=640, ensemble=8, source="image")
    flux = video_defaults("flux", image, 57)
    assert (flux.layer, flux.t, flux.ensemble, flux.resolution, flux.prompt) == (24, 0.09, 1, 960, "a photo of a image")
    assert video_defaults("flux", image, 6).layer == 3  # same relative depth on other depths
    sd3 = video_defaults("sd3", FamilyDefaults(layer=12, t=0.26, resolution=640, ensemble=8, source="x"), 24)
    assert (sd3.layer, sd3.t, sd3.ensemble, sd3.resolution, sd3.prompt) == (12, 0.26, 8, 640, "")


# --- bad input ---------------------------------------------------------------------------------------------------
def test_bad_clips_masks_and_points_are_refused_with_the_input_named():
    clip = Clip(frames=3)
    extractor = SurfaceExtractor(cell=2)
    with pytest.raises(DiTFInputError, match="frames holds 1 frame; a clip needs at least 2"):
        list(propagate_clip(extractor, clip.video()[:1], clip.mask(0)))
    with pytest.raises(DiTFInputError, match="mask of frame 0 is 32x48 but the frames are 64x48"):
        list(propagate_clip(extractor, clip.video(), clip.mask(0)[:, :32]))
    with pytest.raises(DiTFInputError, match="keyframe 7 is outside the clip"):
        list(propagate_clip(extractor, clip.video(), clip.mask(0), keyframes={7: clip.mask(0)}))
    with pytest.raises(DiTFInputError, match=r"points\[1\] = \(80, 4\) lies outside the 64x48"):
        list(track_clip(extractor, clip.video(), [[4, 4], [80, 4]]))
    with pytest.raises(DiTFInputError, match="points are not valid JSON"):
        list(track_clip(extractor, clip.video(), "[{x: 1}"))
    with pytest.raises(TypeError, match="must return DiTFeatures of the 1 frames it was given, got 2 images"):
        list(stream_features(lambda frames: extractor(torch.cat([frames, frames])), clip.video()))
    from ditf_core.video import mask_to_labels

    with pytest.raises(DiTFInputError, match="mask is empty"):
        mask_to_labels(torch.zeros(48, 64))
    with pytest.raises(DiTFInputError, match="top_k must be an integer of at least 1"):
        PropagationSettings(top_k=0)
    with pytest.raises(DiTFInputError, match="threshold must be a number in"):
        TrackSettings(threshold=float("nan"))
