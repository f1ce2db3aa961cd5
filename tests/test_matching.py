"""Matching: exact == the paper protocol's literal loop, fast ~ exact, dense flow, masks, points, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping
from ditf_core.matching import format_points, match_dense, match_points, parse_points

# --- synthetic features ------------------------------------------------------------------------------------


def random_features(image_size, grid, channels=16, batch=1, seed=0, settings=None) -> DiTFeatures:
    generator = torch.Generator().manual_seed(seed)
    w, h = grid
    features = torch.randn(batch, channels, h, w, generator=generator)
    return DiTFeatures(features, PixelMapping(image_size, (w * 16, h * 16), grid), settings or {})


def smooth_field(xy: torch.Tensor, channels: int = 64, wavelength: float = 40.0, seed: int = 0) -> torch.Tensor:
    """A smooth, position-identifying random field: [..., 2] pixel positions -> [..., channels]."""
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(channels, 2, generator=generator) / wavelength
    phase = torch.rand(channels, generator=generator) * 2 * math.pi
    return torch.sin(xy @ omega.T + phase)


def field_features(image_size, grid, to_world=lambda p: p) -> DiTFeatures:
    """Features of an image whose pixel p shows the world point to_world(p), sampled at cell centres."""
    mapping = PixelMapping(image_size, (grid[0] * 16, grid[1] * 16), grid)
    v, u = torch.meshgrid(torch.arange(grid[1]).float(), torch.arange(grid[0]).float(), indexing="ij")
    field = smooth_field(to_world(mapping.to_pixel(torch.stack([u, v], dim=-1))))
    return DiTFeatures(field.permute(2, 0, 1)[None].contiguous(), mapping)


AFFINE = torch.tensor([[0.9, 0.15], [-0.1, 1.05]])
SHIFT = torch.tensor([12.0, -7.0])


def forward_warp(p):  # source pixel -> target pixel
    return p @ AFFINE.T + SHIFT


def inverse_warp(q):  # target pixel -> source pixel
    return (q - SHIFT) @ torch.linalg.inv(AFFINE).T


def warped_pair():
    return field_features((160, 128), (20, 16)), field_features((144, 176), (18, 22), inverse_warp)


# --- the paper protocol, literally -------------------------------------------------------------------------


def literal_protocol(source, target, points):
    """The official eval_spair.py loop in float64: upsample both maps to image size, read the source vector at
    the integer keypoint, normalise, cosine with every target pixel, argmax. Exact ties (pixels whose
    upsampled vectors are identical, e.g. the clamped border bands) go to the first pixel in row-major order."""
    (sw, sh), (tw, th) = source.mapping.image_size, target.mapping.image_size
    src = F.interpolate(source.features.double(), size=(sh, sw), mode="bilinear", align_corners=False)
    trg = F.interpolate(target.features.double(), size=(th, tw), mode="bilinear", align_corners=False)
    channels = src.shape[1]
    found = []
    for x, y in points.round().long().tolist():
        src_vec = F.normalize(src[0, :, y, x].view(1, channels)).transpose(0, 1)
        trg_vec = F.normalize(trg.view(channels, -1).transpose(0, 1))
        cos_map = torch.mm(trg_vec, src_vec).view(th, tw).numpy()
        first = np.flatnonzero(cos_map.ravel() >= cos_map.max() - 1e-9)[0]
        row, col = np.unravel_index(first, cos_map.shape)
        found.append([col, row])
    return torch.tensor(found, dtype=torch.float32)


@pytest.mark.parametrize(
    "source_size, source_grid, target_size, target_grid",
    [((47, 38), (7, 5), (33, 51), (4, 6)), ((64, 48), (8, 6), (80, 80), (5, 5)), ((30, 20), (6, 4), (30, 20), (6, 4))],
)
def test_exact_equals_the_literal_paper_protocol(source_size, source_grid, target_size, target_grid):
    source = random_features(source_size, source_grid, seed=1)
    target = random_features(target_size, target_grid, seed=2)
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(40, 2, generator=generator) * (torch.tensor(source_size) - 1)  # sub-pixel: exact rounds
    result = match_points(source, target, points, mode="exact", chunk_elements=300)  # many row chunks
    assert torch.equal(result.points[0], literal_protocol(source, target, points))
    assert torch.equal(result.source_points[0], points.round())
    assert torch.equal(result.cells[0], target.mapping.to_feature(result.points[0]))
    # the score is the cosine of the two upsampled vectors at the matched pixels
    (sw, sh), (tw, th) = source_size, target_size
    src = F.interpolate(source.features, size=(sh, sw), mode="bilinear", align_corners=False)[0]
    trg = F.interpolate(target.features, size=(th, tw), mode="bilinear", align_corners=False)[0]
    s = points.round().long()
    t = result.points[0].long()
    expected = F.cosine_similarity(src[:, s[:, 1], s[:, 0]], trg[:, t[:, 1], t[:, 0]], dim=0)
    torch.testing.assert_close(result.scores[0], expected, atol=1e-5, rtol=0)


def test_exact_is_batched_per_pair_and_independent_of_chunking():
    source = random_features((50, 40), (5, 4), batch=2, seed=4)
    target = random_features((36, 60), (3, 5), batch=2, seed=5)
    points = torch.tensor([[[3.0, 4.0], [40.0, 30.0], [49.5, 0.0]], [[10.0, 10.0], [-0.5, 39.5], [25.0, 20.0]]])
    batched = match_points(source, target, points, mode="exact", chunk_elements=50)
    big_chunks = match_points(source, target, points, mode="exact", chunk_elements=1 << 24)
    assert torch.equal(batched.points, big_chunks.points)
    for b in range(2):
        single = match_points(source.select(b), target.select(b), points[b], mode="exact")
        assert torch.equal(batched.points[b], single.points[0])
        on_pixels = points[b].round().clamp(min=0).minimum(torch.tensor([49.0, 39.0]))  # the half-pixel rim
        assert torch.equal(single.source_points[0], on_pixels)
        assert torch.equal(single.points[0], literal_protocol(source.select(b), target.select(b), on_pixels))


def test_fast_lands_within_one_cell_of_exact_on_smooth_features():
    source, target = warped_pair()
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(50, 2, generator=generator) * torch.tensor([100.0, 80.0]) + torch.tensor([30.0, 24.0])
    fast = match_points(source, target, points)
    exact = match_points(source, target, points, mode="exact")
    cell = torch.tensor(target.mapping.cell_size)
    assert ((fast.points - exact.points) / cell).norm(dim=-1).max() <= 1.0
    # and both find the known warp: sub-cell refinement beats the unrefined argmax
    truth = forward_warp(points)
    fast_error = ((fast.points[0] - truth) / cell).norm(dim=-1)
    coarse = match_points(source, target, points, window=1)
    coarse_error = ((coarse.points[0] - truth) / cell).norm(dim=-1)
    assert fast_error.max() < 0.75 and fast_error.mean() < 0.2
    assert fast_error.mean() < 0.5 * coarse_error.mean()
    torch.testing.assert_close(fast.cells, target.mapping.to_feature(fast.points))
    assert (fast.scores > 0.9).all() and fast.valid.all()


def test_dense_flow_recovers_a_known_affine_warp():
    source, target = warped_pair()
    dense = match_dense(source, target)
    h, w = target.grid
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    truth = inverse_warp(target.mapping.to_pixel(torch.stack([u, v], dim=-1)))  # [h, w, 2] source pixels
    inside = (truth[..., 0] > 0) & (truth[..., 0] < 159) & (truth[..., 1] > 0) & (truth[..., 1] < 127)
    error = ((dense.target_to_source[0].permute(1, 2, 0) - truth) / torch.tensor(source.mapping.cell_size)).norm(dim=-1)
    assert error[inside].max() < 1.0 and error[inside].mean() < 0.25
    # cells seeing what the source never saw fail the cycle check; the rest pass it
    assert dense.target_confidence[0][inside].mean() > 0.9
    assert dense.target_confidence[0][~inside].mean() < 0.5
    # the other direction: source cells that stay in view land where the warp sends them
    hs, ws = source.grid
    v, u = torch.meshgrid(torch.arange(hs).float(), torch.arange(ws).float(), indexing="ij")
    forward_truth = forward_warp(source.mapping.to_pixel(torch.stack([u, v], dim=-1)))
    in_view = (forward_truth[..., 0] > 0) & (forward_truth[..., 0] < 143) & (forward_truth[..., 1] > 0)
    in_view &= forward_truth[..., 1] < 175
    forward_error = dense.source_to_target[0].permute(1, 2, 0) - forward_truth
    forward_error = forward_error / torch.tensor(target.mapping.cell_size)
    assert in_view.float().mean() > 0.6
    assert forward_error.norm(dim=-1)[in_view].max() < 1.0
    assert dense.source_confidence[0][in_view].mean() > 0.9 > dense.source_confidence[0][~in_view].mean()
    assert ((dense.target_confidence >= 0) & (dense.target_confidence <= 1)).all()


def test_dense_chunking_and_pixel_upsampling():
    source, target = warped_pair()
    small = match_dense(source, target, chunk_elements=100)
    large = match_dense(source, target, chunk_elements=1 << 24)
    torch.testing.assert_close(small.target_to_source, large.target_to_source)
    assert torch.equal(small.target_confidence, large.target_confidence)
    coords, confidence = small.target_to_source_pixels()
    assert coords.shape == (1, 2, 176, 144) and confidence.shape == (1, 176, 144)
    # each pixel's value is the bilinear blend of the cells around its feature position (mapping.to_feature)
    cells = small.target_to_source[0]
    for x, y in [(37, 50), (100, 13), (5, 170), (143, 0)]:
        u, v = target.mapping.to_feature(torch.tensor([float(x), float(y)])).tolist()
        u, v = min(max(u, 0.0), 17.0), min(max(v, 0.0), 21.0)
        j, i = min(int(u), 16), min(int(v), 20)
        a, b = u - j, v - i
        expected = (1 - b) * ((1 - a) * cells[:, i, j] + a * cells[:, i, j + 1]) + b * (
            (1 - a) * cells[:, i + 1, j] + a * cells[:, i + 1, j + 1]
        )
        torch.testing.assert_close(coords[0, :, y, x], expected, atol=1e-4, rtol=0)


def test_target_mask_restricts_where_matches_land():
    source, target = warped_pair()
    points = torch.tensor([[40.0, 40.0], [120.0, 90.0], [80.0, 64.0]])
    mask = torch.zeros(176, 144)
    mask[:, 100:] = 1.0  # only the right part of the target
    for mode in ("fast", "exact"):
        masked = match_points(source, target, points, mode=mode, target_mask=mask)
        assert (masked.points[0, :, 0] >= 100 - 4).all(), mode  # within half a cell of the allowed region
        free = match_points(source, target, points, mode=mode)
        lands_inside = free.points[0, :, 0] >= 100
        assert torch.allclose(masked.points[0][lands_inside], free.points[0][lands_inside])
    exact = match_points(source, target, points, mode="exact", target_mask=mask)
    assert (exact.points[0, :, 0] >= 100).all()
    dense = match_dense(source, target, target_mask=mask)
    landed = dense.source_to_target[0, 0]
    assert (landed >= 100 - 4).all()
    assert (dense.target_confidence[0][:, :12] == 0).all()  # cells 0..11 lie left of x = 100: masked out


def test_source_mask_invalidates_points_and_restricts_dense_sources():
    source, target = warped_pair()
    mask = torch.zeros(128, 160, dtype=torch.bool)
    mask[:64] = True  # top half of the source
    points = torch.tensor([[50.0, 20.0], [50.0, 100.0]])
    result = match_points(source, target, points, source_mask=mask)
    assert result.valid.tolist() == [[True, False]]
    dense = match_dense(source, target, source_mask=mask)
    assert (dense.target_to_source[0, 1] <= 64 + 4).all()  # matches come only from the allowed (top) rows
    assert (dense.source_confidence[0][8:] == 0).all()
    grid_mask = torch.zeros(16, 20)  # a grid-size mask works the same
    grid_mask[:8] = 1
    assert torch.equal(match_dense(source, target, source_mask=grid_mask).target_to_source, dense.target_to_source)


def test_points_json_round_trip_in_kjnodes_format():
    text = '[{"x":120,"y":80},{"x":200.5,"y":150}]'
    points = parse_points(text)
    assert torch.equal(points, torch.tensor([[120.0, 80.0], [200.5, 150.0]]))
    assert json.loads(format_points(points)) == [{"x": 120, "y": 80}, {"x": 200.5, "y": 150}]
    assert torch.equal(parse_points(format_points(points)), points)
    assert torch.equal(parse_points("[[1, 2], [3, 4]]"), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(parse_points([[1, 2]]), torch.tensor([[1.0, 2.0]]))
    assert parse_points("[]").shape == (0, 2)
    source, target = warped_pair()
    matches = match_points(source, target, '[{"x": 10, "y": 20}, {"x": 90, "y": 60}]')  # JSON goes straight in
    assert torch.equal(matches.points, match_points(source, target, torch.tensor([[10.0, 20.0], [90.0, 60.0]])).points)
    assert torch.equal(parse_points(matches.to_json()), matches.points[0].round(decimals=2))


@pytest.mark.parametrize(
    "text, message",
    [("[{x: 1}]", "not valid JSON"), ('[{"x": 1}]', "needs both 'x' and 'y'"), ('[[1, 2, 3]]', "must be"),
     ('[{"x": "a", "y": 2}]', "non-numeric"), ('[{"x": NaN, "y": 2}]', "NaN"), ('"12"', "JSON list")],
)
def test_bad_points_text_is_rejected(text, message):
    with pytest.raises((ValueError, TypeError), match=message):
        parse_points(text)


def test_bad_inputs_raise_clear_errors():
    source, target = warped_pair()
    good = torch.tensor([[10.0, 10.0]])
    cases = [
        (dict(points=torch.zeros(0, 2)), ValueError, "empty"),
        (dict(points=torch.tensor([[160.0, 10.0]])), ValueError, "outside the 160x128 source image"),
        (dict(points=torch.tensor([[-1.0, 10.0]])), ValueError, "outside"),
        (dict(points=torch.tensor([[float("nan"), 10.0]])), ValueError, "NaN"),
        (dict(points=torch.zeros(3, 3)), ValueError, r"\[K, 2\]"),
        (dict(points=torch.zeros(2, 1, 2)), ValueError, "2 point sets but the features hold 1"),
        (dict(points=good, mode="slow"), ValueError, "mode must be one of"),
        (dict(points=good, window=2), ValueError, "odd"),
        (dict(points=good, temperature=-1.0), ValueError, "temperature"),
        (dict(points=good, target_mask=torch.ones(10, 10)), ValueError, "must match its image"),
        (dict(points=good, target_mask=torch.zeros(176, 144)), ValueError, "allows no"),
        (dict(points=good, target_mask=[[1]]), TypeError, "tensor"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            match_points(source, target, **kwargs)
    with pytest.raises(TypeError, match="must be DiTFeatures"):
        match_points(source.features, target, good)
    with pytest.raises(ValueError, match="source holds 2 images but target holds 1"):
        two = DiTFeatures(source.features.expand(2, -1, -1, -1), source.mapping)
        match_points(two, target, good)
    with pytest.raises(ValueError, match="target.features contain NaN"):
        broken = target.features.clone()
        broken[0, 3, 2, 1] = float("nan")
        match_points(source, DiTFeatures(broken, target.mapping), good)
    with pytest.raises(ValueError, match="channels"):
        match_points(source, DiTFeatures(target.features[:, :10], target.mapping), good)
    with pytest.raises(ValueError, match="cycle_tolerance"):
        match_dense(source, target, cycle_tolerance=0)


def test_features_from_different_models_or_layers_are_rejected():
    base = {"family": "flux", "layer": 28, "mode": "ditf", "t": 0.26, "model": {"config_sha256": "aaaa"}}
    source = random_features((32, 32), (4, 4), settings=base)
    for change, message in [({"layer": 20}, "layer=28 but target with layer=20"), ({"mode": "original"}, "mode"),
                            ({"family": "sd3"}, "family"), ({"model": {"config_sha256": "bbbb"}}, "different models")]:
        target = random_features((32, 32), (4, 4), settings={**base, **change})
        with pytest.raises(ValueError, match=message):
            match_points(source, target, torch.tensor([[5.0, 5.0]]))
        with pytest.raises(ValueError, match=message):
            match_dense(source, target)
    same_model_other_t = random_features((32, 32), (4, 4), settings={**base, "t": 0.5})
    assert match_points(source, same_model_other_t, torch.tensor([[5.0, 5.0]])).points.shape == (1, 1, 2)
