"""Co-segmentation: planted groups recovered with the same ids in every image, ids ordered by size, a seed gives the
same answer, foreground masks and functions, masks and previews at the original image size, and clear errors."""

from __future__ import annotations

import pytest
import torch

from ditf_core import DiTFeatures, DiTFInputError, PixelMapping
from ditf_core.cosegment import BACKGROUND, cosegment, kmeans
from ditf_core.matching.draw import point_colours

GRID = (8, 6)  # (w, h) cells
IMAGE = (64, 48)  # (W, H) pixels: 8 px per cell


def planted(batch=4, groups=3, channels=16, noise=0.15, seed=0, grid=GRID, image=IMAGE):
    """Features whose cells belong to ``groups`` known groups (one random direction each, plus noise), laid out
    differently in every image; group g covers roughly (g + 1) parts in (1 + ... + groups) of each image, so the
    groups have distinct sizes. Returns (DiTFeatures, planted group ids [B, h, w])."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(groups, channels, generator=generator), dim=1)
    w, h = grid
    weights = torch.arange(1, groups + 1, dtype=torch.float32)
    bounds = torch.cumsum(weights / weights.sum(), 0) * (w * h)
    order = torch.stack([torch.randperm(w * h, generator=generator) for _ in range(batch)])  # a layout per image
    group = torch.bucketize(torch.arange(w * h, dtype=torch.float32) + 0.5, bounds)[None].expand(batch, -1)
    ids = torch.empty(batch, w * h, dtype=torch.long).scatter_(1, order, group).view(batch, h, w)
    scale = 0.5 + torch.rand(batch, 1, h, w, generator=generator) * 3  # magnitudes vary: cosine must not care
    maps = directions[ids].permute(0, 3, 1, 2) * scale + noise * torch.randn(batch, channels, h, w, generator=generator)
    mapping = PixelMapping(image, (w * 16, h * 16), grid)
    return DiTFeatures(maps, mapping, {"family": "flux", "layer": 3, "mode": "ditf"}), ids


def test_planted_groups_come_back_with_the_same_ids_in_every_image():
    features, ids = planted()
    result = cosegment(features, 3, seed=0)
    assert result.images == 4 and result.clusters == 3
    # the largest planted group is the largest cluster (id 0), and so on: ids ordered by size
    expected = 2 - ids
    for index in range(4):
        assert torch.equal(result.labels[index], expected[index]), index
    assert result.sizes.tolist() == sorted(result.sizes.tolist(), reverse=True)
    assert int(result.sizes.sum()) == 4 * 48 and result.converged


def test_a_seed_gives_the_same_answer():
    features, _ = planted(noise=0.6, seed=3)  # noisy enough that the clustering is not trivial
    first = cosegment(features, 5, seed=7)
    again = cosegment(features, 5, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first.labels, again.labels))
    assert torch.equal(first.centres, again.centres)
    assert any(not torch.equal(a, b) for a, b in zip(first.labels, cosegment(features, 5, seed=8).labels))


def test_several_feature_maps_of_different_sizes_are_clustered_together():
    big, big_ids = planted(batch=1, seed=1)
    small, small_ids = planted(batch=2, seed=1, grid=(5, 4), image=(40, 32))  # same directions (same seed)
    result = cosegment([big, small], 3)
    assert [tuple(labels.shape) for labels in result.labels] == [(6, 8), (4, 5), (4, 5)]
    assert torch.equal(result.labels[0], 2 - big_ids[0])
    assert torch.equal(torch.stack(result.labels[1:]), 2 - small_ids)
    assert result.mappings[1].image_size == (40, 32)


def test_foreground_mask_keeps_the_background_out():
    features, ids = planted(batch=2)
    mask = torch.zeros(2, 48, 64)
    mask[:, :, :32] = 1.0  # the left half of each image (4 of 8 cell columns)
    result = cosegment(features, 3, foreground=mask)
    for index in range(2):
        assert bool((result.labels[index][:, 4:] == BACKGROUND).all())
        assert bool((result.labels[index][:, :4] >= 0).all())
        masks = result.masks(index)
        assert masks.shape == (3, 48, 64) and float(masks[:, :, 32:].sum()) == 0.0
        assert torch.equal(masks[:, :, :32].sum(dim=0), torch.ones(48, 32))


def test_foreground_function_is_the_hook_for_other_foregrounds():
    features, _ = planted(batch=2)
    calls = []

    def top_rows(f):
        calls.append(f.batch)
        keep = torch.zeros(f.batch, *f.grid, dtype=torch.bool)
        keep[:, :2] = True
        return keep

    result = cosegment(features, 2, foreground=top_rows)
    assert calls == [2]
    assert bool((result.labels[0][2:] == BACKGROUND).all()) and bool((result.labels[0][:2] >= 0).all())
    with pytest.raises(DiTFInputError, match="foreground function must return bool"):
        cosegment(features, 2, foreground=lambda f: torch.ones(3, 3, dtype=torch.bool))


def test_masks_and_preview_follow_the_pixel_mapping():
    features, _ = planted(batch=1, grid=(3, 2), image=(10, 7))  # cells of 10/3 x 7/2 px: uneven
    result = cosegment(features, 2)
    pixels = result.pixel_labels(0)
    assert pixels.shape == (7, 10)
    for y in range(7):
        for x in range(10):
            u, v = int((x + 0.5) * 3 / 10), int((y + 0.5) * 2 / 7)
            assert pixels[y, x] == result.labels[0][v, u], (x, y)
    colours = torch.tensor(point_colours(2), dtype=torch.float32) / 255.0
    plain = result.preview(0)
    assert plain.shape == (3, 7, 10)
    assert torch.allclose(plain[:, 0, 0], colours[pixels[0, 0]])
    image = torch.zeros(3, 7, 10)
    over = result.preview(0, image, opacity=0.5)
    assert torch.allclose(over[:, 3, 4], 0.5 * colours[pixels[3, 4]])


def test_clear_errors():
    features, _ = planted(batch=1, grid=(2, 2), image=(16, 16))
    with pytest.raises(DiTFInputError, match="clusters=5 but there are only 4 feature cells in the features"):
        cosegment(features, 5)
    mask = torch.zeros(1, 16, 16)
    mask[:, :8, :8] = 1.0
    with pytest.raises(DiTFInputError, match="only 1 feature cells inside the foreground"):
        cosegment(features, 2, foreground=mask)
    for clusters in (1, 65, 2.0, True):
        with pytest.raises(DiTFInputError, match="clusters must be a whole number in"):
            cosegment(features, clusters)
    with pytest.raises(DiTFInputError, match="foreground is 5x5 but must match"):
        cosegment(features, 2, foreground=torch.ones(1, 5, 5))
    other = DiTFeatures(torch.randn(1, 3, 2, 2), features.mapping)
    with pytest.raises(DiTFInputError, match=r"\[3, 16\] channels"):
        cosegment([features, other], 2)
    with pytest.raises(TypeError, match="features must be DiTFeatures"):
        cosegment(torch.randn(1, 4, 2, 2), 2)
    same = DiTFeatures(torch.ones(1, 4, 3, 3), PixelMapping((12, 12), (48, 48), (3, 3)))
    with pytest.raises(DiTFInputError, match="only 1 distinct vectors, fewer than the 2 clusters"):
        cosegment(same, 2)


def test_kmeans_in_chunks_equals_one_block():
    """The chunked distances give the same answer as one block (chunk smaller than the data)."""
    points = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    whole = kmeans(points, 6, seed=1, chunk=1000)
    chunked = kmeans(points, 6, seed=1, chunk=64)
    assert torch.equal(whole.labels, chunked.labels)
    assert torch.allclose(whole.centres, chunked.centres, atol=1e-5)
