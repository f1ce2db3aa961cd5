"""Warping and transfer: flow warps, TPS and homographies recover known transforms; masks and colours move."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.geometry.transform import warp_affine, warp_perspective

from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping
from ditf_core.matching import match_dense
from ditf_core.warping import (
    confident_matches,
    fit_homography,
    transfer_appearance,
    transfer_mask,
    warp_homography,
    warp_image,
    warp_to_target,
    warp_tps,
)

SHIFT = torch.tensor([14.0, 9.0])  # target pixel q shows source pixel q - SHIFT


def smooth_field(xy: torch.Tensor, channels: int = 64, wavelength: float = 40.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    omega = torch.randn(channels, 2, generator=generator) / wavelength
    phase = torch.rand(channels, generator=generator) * 2 * math.pi
    return torch.sin(xy @ omega.T + phase)


def field_features(image_size, grid, to_world) -> DiTFeatures:
    mapping = PixelMapping(image_size, (grid[0] * 16, grid[1] * 16), grid)
    v, u = torch.meshgrid(torch.arange(grid[1]).float(), torch.arange(grid[0]).float(), indexing="ij")
    field = smooth_field(to_world(mapping.to_pixel(torch.stack([u, v], dim=-1))))
    return DiTFeatures(field.permute(2, 0, 1)[None].contiguous(), mapping)


def scene(width: int, height: int, to_world) -> torch.Tensor:
    """A smooth RGB image [1, 3, H, W] whose pixel p shows the world point to_world(p)."""
    y, x = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    world = to_world(torch.stack([x, y], dim=-1))
    wx, wy = world[..., 0], world[..., 1]
    red, green = 0.5 + 0.4 * torch.sin(wx / 9 + wy / 13), 0.5 + 0.4 * torch.cos(wx / 7 - wy / 11)
    return torch.stack([red, green, 0.5 + 0.4 * torch.sin((wx + 2 * wy) / 17)])[None]


def shifted_pair():
    """Source 128x96, target 120x104 showing the source shifted by SHIFT; features and images of both."""
    source = field_features((128, 96), (16, 12), lambda p: p)
    target = field_features((120, 104), (15, 13), lambda q: q - SHIFT)
    return source, target, scene(128, 96, lambda p: p), scene(120, 104, lambda q: q - SHIFT)


def inner(width, height, margin_left, margin_top, margin=4):
    """Target pixels whose source position lies well inside the source image."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    sx, sy = x - margin_left, y - margin_top
    return (sx >= margin) & (sx < 128 - margin) & (sy >= margin) & (sy < 96 - margin)


def test_warp_to_target_reproduces_the_shifted_image():
    source, target, source_image, target_image = shifted_pair()
    matches = match_dense(source, target)
    region = inner(120, 104, 14, 9, margin=12)
    coords, _ = matches.target_to_source_pixels()
    y, x = torch.meshgrid(torch.arange(104).float(), torch.arange(120).float(), indexing="ij")
    flow_error = (coords[0] - (torch.stack([x, y]) - SHIFT[:, None, None])).norm(dim=0)
    assert flow_error[region].mean() < 1.0  # pixels; a feature cell is 8
    warped = warp_to_target(source_image, matches)
    assert warped.shape == target_image.shape
    error = (warped - target_image).abs().amax(dim=1)[0]
    unwarped = (warp_image(source_image, torch.stack([x, y])[None]) - target_image).abs().amax(dim=1)[0]
    assert error[region].mean() < 0.05
    assert unwarped[region].mean() > 5 * error[region].mean()  # the warp did real work


def test_warp_image_samples_pixel_coordinates_exactly():
    image = torch.rand(2, 3, 20, 30)
    y, x = torch.meshgrid(torch.arange(10).float(), torch.arange(12).float(), indexing="ij")
    coords = torch.stack([x * 2 + 1, y + 5])[None]  # integer source pixels
    out = warp_image(image, coords)
    assert torch.allclose(out, image[:, :, 5:15, 1:25:2], atol=1e-6)


def test_tps_recovers_an_affine_transform():
    image = scene(80, 64, lambda p: p)
    generator = torch.Generator().manual_seed(0)
    matrix = torch.tensor([[0.9, 0.1, 4.0], [-0.08, 1.1, -3.0]])
    source_points = torch.rand(12, 2, generator=generator) * torch.tensor([79.0, 63.0])
    target_points = source_points @ matrix[:, :2].T + matrix[:, 2]
    out = warp_tps(image, source_points, target_points, width=70, height=66)
    reference = warp_affine(image, matrix[None], (66, 70), align_corners=True)
    covered = reference.sum(dim=1) > 0
    assert out.shape == (1, 3, 66, 70)
    assert (out - reference).abs().amax(dim=1)[covered].max() < 1e-3


def test_tps_carries_control_points_onto_their_targets():
    # an image whose channels are its own coordinates: sampling it reveals where each output pixel came from
    y, x = torch.meshgrid(torch.arange(60).float(), torch.arange(90).float(), indexing="ij")
    coordinates = torch.stack([x, y])[None]
    source_points = torch.tensor([[10.0, 10.0], [80.0, 12.0], [45.0, 30.0], [12.0, 50.0], [78.0, 48.0], [30.0, 20.0]])
    target_points = torch.tensor([[5.0, 8.0], [70.0, 6.0], [44.0, 33.0], [9.0, 55.0], [75.0, 52.0], [22.0, 25.0]])
    # a target point given twice (with another source) would make the system singular: the repeat is dropped
    repeated_source = torch.cat([source_points, source_points[:1] + 3.0])
    repeated_target = torch.cat([target_points, target_points[:1]])
    out = warp_tps(coordinates, repeated_source, repeated_target, width=80, height=64)
    landed = out[0][:, target_points[:, 1].long(), target_points[:, 0].long()].T
    torch.testing.assert_close(landed, source_points, atol=1e-3, rtol=0)


def test_tps_through_many_control_points_stays_exact():
    # kornia's get_tps_transform (kernels at the other point set) bent a plain translation through ~100 random
    # control points; the standard spline reproduces it
    image = scene(128, 96, lambda p: p)
    generator = torch.Generator().manual_seed(0)
    target_points = torch.rand(200, 2, generator=generator) * torch.tensor([100.0, 80.0])
    out = warp_tps(image, target_points + torch.tensor([16.0, 8.0]), target_points, width=128, height=96)
    torch.testing.assert_close(out[..., :80, :100], image[..., 8:88, 16:116], atol=1e-4, rtol=0)


def test_homography_with_ransac_recovers_a_known_homography_despite_outliers():
    homography = torch.tensor([[1.05, 0.1, 3.0], [-0.05, 0.95, 5.0], [1e-4, 2e-4, 1.0]])
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(40, 2, generator=generator) * torch.tensor([79.0, 63.0])
    projected = torch.cat([source, torch.ones(40, 1)], dim=1) @ homography.T
    target = projected[:, :2] / projected[:, 2:]
    target[:6] += 25.0  # six gross outliers
    found, inliers = fit_homography(source, target, threshold=1.0)
    torch.testing.assert_close(found, homography, atol=1e-3, rtol=1e-3)
    assert not inliers[:6].any() and inliers[6:].all()
    image = scene(80, 64, lambda p: p)
    warped = warp_homography(image, found, width=72, height=60)
    reference = warp_perspective(image, homography[None], (60, 72), align_corners=True)
    assert (warped - reference).abs().max() < 1e-3


def test_confident_dense_matches_feed_a_homography():
    source, target, _, _ = shifted_pair()
    matches = match_dense(source, target)
    source_points, target_points = confident_matches(matches, min_confidence=1.0, max_points=60)
    assert 8 <= source_points.shape[0] <= 60
    assert torch.unique(source_points, dim=0).shape[0] == source_points.shape[0]
    # every kept cell is a mutual nearest neighbour
    cells = matches.target_mapping.to_feature(target_points).round().long()
    assert (matches.target_confidence[0][cells[:, 1], cells[:, 0]] == 1).all()
    found, _ = fit_homography(source_points, target_points, threshold=2.0)
    translation = torch.eye(3)
    translation[:2, 2] = SHIFT
    probe = torch.tensor([[30.0, 30.0, 1.0], [100.0, 70.0, 1.0]])
    mapped = probe @ found.T
    torch.testing.assert_close(mapped[:, :2] / mapped[:, 2:], (probe @ translation.T)[:, :2], atol=1.0, rtol=0)


def test_mask_transfer_moves_a_segment_with_the_scene():
    source, target, _, _ = shifted_pair()
    matches = match_dense(source, target)
    mask = torch.zeros(1, 1, 96, 128)
    mask[..., 30:70, 40:90] = 1.0
    moved = transfer_mask(mask, matches, threshold=0.5)
    expected = torch.zeros(1, 1, 104, 120)
    expected[..., 39:79, 54:104] = 1.0  # shifted by (14, 9)
    intersection = (moved * expected).sum()
    union = ((moved + expected) > 0).float().sum()
    assert intersection / union > 0.9
    gated = transfer_mask(mask[:, 0], matches, min_confidence=1.01)  # nothing is that confident
    assert gated.abs().max() == 0


def test_appearance_transfer_blends_by_confidence():
    source, target, source_image, target_image = shifted_pair()
    matches = match_dense(source, target)
    recoloured = source_image.flip(1)  # same structure, other colours
    assert torch.equal(transfer_appearance(recoloured, target_image, matches, strength=0.0), target_image)
    out = transfer_appearance(recoloured, target_image, matches, strength=0.5)
    warped = warp_to_target(recoloured, matches)
    _, confidence = matches.target_to_source_pixels()
    expected = target_image + 0.5 * confidence[:, None] * (warped - target_image)
    torch.testing.assert_close(out, expected.clamp(0, 1))
    full = transfer_appearance(recoloured, target_image, matches)
    confident = confidence[0] > 0.999
    assert confident.float().mean() > 0.5
    torch.testing.assert_close(full[0][:, confident], warped[0][:, confident], atol=1e-3, rtol=0)


def test_bad_inputs_raise_clear_errors():
    source, target, source_image, target_image = shifted_pair()
    matches = match_dense(source, target)
    with pytest.raises(TypeError, match=r"\[B, H, W, C\]: permute"):
        warp_to_target(source_image[0], matches)
    with pytest.raises(ValueError, match="matches were made for a 128x96 image"):
        warp_to_target(target_image, matches)
    with pytest.raises(ValueError, match="at least 3"):
        warp_tps(source_image, torch.zeros(2, 2), torch.zeros(2, 2), width=10, height=10)
    with pytest.raises(ValueError, match="must pair up"):
        warp_tps(source_image, torch.rand(4, 2), torch.rand(5, 2), width=10, height=10)
    with pytest.raises(ValueError, match="at least 5"):
        fit_homography(torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        fit_homography(torch.full((6, 2), float("nan")), torch.rand(6, 2))
    with pytest.raises(ValueError, match="width must be a positive whole number"):
        warp_homography(source_image, torch.eye(3), width=0, height=10)
    with pytest.raises(TypeError):  # the output size is named (width=, height=): a (W, H) tuple cannot be transposed
        warp_homography(source_image, torch.eye(3), (72, 60))
    with pytest.raises(TypeError):
        warp_tps(source_image, torch.rand(4, 2), torch.rand(4, 2), (10, 12))
    with pytest.raises(ValueError, match="strength"):
        transfer_appearance(source_image, target_image, matches, strength=2.0)
