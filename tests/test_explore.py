"""The explorer's similarity map: agrees with match_points "fast", is the cosine map, validates its point."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditf_core.errors import DiTFInputError
from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping
from ditf_core.matching import match_points
from ditf_core.matching.explore import PairExplorer, similarity_map
from test_matching import forward_warp, random_features, warped_pair


@pytest.mark.parametrize("xy", [(40.0, 30.0), (81.3, 64.7), (0.0, 0.0), (159.5, 127.5), (-0.5, 60.0)])
def test_best_match_is_match_points_fast(xy):
    source, target = warped_pair()
    found = similarity_map(source, target, xy)
    reference = match_points(source, target, [list(xy)], mode="fast")
    assert found.best == pytest.approx(tuple(reference.points[0, 0].tolist()), abs=1e-4)
    assert found.cell == pytest.approx(tuple(reference.cells[0, 0].tolist()), abs=1e-5)
    assert found.score == pytest.approx(float(reference.scores[0, 0]), abs=1e-6)


def test_lands_where_the_known_warp_says():
    source, target = warped_pair()
    for xy in ([40.0, 30.0], [100.0, 90.0], [70.0, 50.0]):
        found = torch.tensor(similarity_map(source, target, xy).best)
        expected = forward_warp(torch.tensor(xy))
        assert torch.dist(found, expected) < 8.0  # within one target cell (8 px)


def test_map_is_the_cosine_against_every_target_cell():
    source = random_features((64, 48), (8, 6), channels=32, seed=1)
    target = random_features((96, 80), (12, 10), channels=32, seed=2)
    # the centre of source cell (3, 2) is pixel ((3 + 0.5) * 8 - 0.5, (2 + 0.5) * 8 - 0.5): no interpolation there
    found = similarity_map(source, target, (27.5, 19.5))
    query = F.normalize(source.features[0, :, 2, 3], dim=0)
    expected = torch.einsum("c,chw->hw", query, F.normalize(target.features[0], dim=0))
    assert found.similarity.shape == (10, 12)
    torch.testing.assert_close(found.similarity, expected, atol=1e-5, rtol=0)
    assert found.score == pytest.approx(float(expected.max()), abs=1e-6)
    heat = found.heat()
    assert float(heat.min()) == 0.0 and float(heat.max()) == pytest.approx(1.0)
    assert int(heat.argmax()) == int(expected.argmax())


def test_no_refinement_gives_the_argmax_cell_centre():
    source, target = warped_pair()
    found = similarity_map(source, target, (50.0, 40.0), window=1)
    index = int(found.similarity.argmax())
    w = found.similarity.shape[1]
    assert found.cell == (float(index % w), float(index // w))
    expected = target.mapping.to_pixel(torch.tensor(found.cell))
    assert found.best == pytest.approx(tuple(expected.tolist()))


def test_selects_one_pair_of_a_batch():
    source = random_features((64, 48), (8, 6), batch=3, seed=1)
    target = random_features((64, 48), (8, 6), batch=3, seed=2)
    found = similarity_map(source, target, (10.0, 10.0), index=2)
    alone = similarity_map(source.select(2), target.select(2), (10.0, 10.0))
    torch.testing.assert_close(found.similarity, alone.similarity)


@pytest.mark.parametrize(
    "xy, message",
    [
        ((64.0, 10.0), "outside the 64x48"),
        ((10.0, -0.6), "outside the 64x48"),
        ((float("nan"), 1.0), "NaN"),
        ((1.0, float("inf")), "NaN or infinite"),
        ((1.0, 2.0, 3.0), "one \\(x, y\\) point"),
    ],
)
def test_bad_points_are_refused_by_name(xy, message):
    source = random_features((64, 48), (8, 6), seed=1)
    with pytest.raises(DiTFInputError, match=message):
        similarity_map(source, source, xy)


def test_mismatched_pair_is_refused():
    source = random_features((64, 48), (8, 6), channels=16)
    target = random_features((64, 48), (8, 6), channels=8)
    with pytest.raises(DiTFInputError, match="channels"):
        similarity_map(source, target, (1.0, 1.0))


def test_float16_features_give_float32_maps():
    base = random_features((64, 48), (8, 6), seed=4)
    half = DiTFeatures(base.features.half(), PixelMapping((64, 48), (128, 96), (8, 6)))
    found = similarity_map(half, half, (27.5, 19.5))  # a cell centre
    assert found.similarity.dtype == torch.float32
    assert found.score == pytest.approx(1.0, abs=1e-5)  # a cell matches itself


def test_a_prepared_pair_answers_like_one_off_calls_and_keeps_no_copy_of_the_source():
    source, target = warped_pair()
    explorer = PairExplorer(source, target)
    for xy in ([10.0, 10.0], [80.5, 33.2], [159.0, 127.0]):
        once = similarity_map(source, target, xy)
        again = explorer(xy)
        torch.testing.assert_close(again.similarity, once.similarity)
        assert (again.best, again.cell, again.score) == (once.best, once.cell, once.score)
    assert explorer.source.features.data_ptr() == source.features.data_ptr()  # only the target is prepared
