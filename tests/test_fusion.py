"""DiTF + DINOv2 fusion math by hand on small tensors: resampling through both pixel mappings, per-part L2
normalisation, the weights, the joint PCA (exact, deterministic, sign-fixed), the settings record, and matching's
refusal of mismatched fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditf_core import DiTFeatures, DiTFInputError, PixelMapping
from ditf_core.fusion import (
    DinoFeatures,
    dino_mapping,
    fit_joint_pca,
    fuse_dino,
    fuse_dino_jointly,
    resample_to_grid,
)
from ditf_core.matching import match_dense, match_points
from ditf_core.matching.checks import check_pair

DINO_MODEL = {"name": "DINOv2 test", "hidden_size": 6, "depth": 2, "weights_sha256": "0123"}


def ditf(batch=2, channels=5, grid=(4, 3), image=(64, 48), seed=0, **settings) -> DiTFeatures:
    """Random DiTF features on a (w, h) ``grid`` of an ``image`` (W, H)."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, channels, grid[1], grid[0], generator=generator)
    record = {"family": "flux", "layer": 3, "mode": "ditf", **settings}
    return DiTFeatures(maps, PixelMapping(image, (grid[0] * 16, grid[1] * 16), grid), record)


def dino(batch=2, channels=6, image=(64, 48), resolution=56, seed=1) -> DinoFeatures:
    """Random DINOv2 features of an ``image`` (W, H) encoded at ``resolution`` px (64x48 at 56 px: 4x3 patches)."""
    mapping = dino_mapping(*image, resolution)
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, channels, mapping.grid_size[1], mapping.grid_size[0], generator=generator)
    return DinoFeatures(maps, mapping, DINO_MODEL)


# --- resampling ----------------------------------------------------------------------------------------------
def test_upsampling_samples_dino_where_each_ditf_cell_centre_lies():
    """A coarse DINOv2 grid read at every DiTF cell centre, the position computed through both mappings (cell ->
    original pixel -> DINOv2 coordinate) and bilinearly interpolated by hand."""
    image = (90, 60)
    coarse = PixelMapping(image, (42, 28), (3, 2))
    fine = PixelMapping(image, (112, 80), (7, 5))
    maps = torch.randn(1, 2, 2, 3, generator=torch.Generator().manual_seed(3))
    resampled = resample_to_grid(maps, coarse, fine)
    assert resampled.shape == (1, 2, 5, 7)
    for v in range(5):
        for u in range(7):
            x, y = coarse.to_feature(fine.to_pixel(torch.tensor([u, v], dtype=torch.float32))).tolist()
            x, y = min(max(x, 0.0), 2.0), min(max(y, 0.0), 1.0)  # border cells clamp, like the interpolation
            x0, y0 = min(int(x), 1), min(int(y), 0)
            fx, fy = x - x0, y - y0
            expected = ((1 - fx) * (1 - fy) * maps[0, :, y0, x0] + fx * (1 - fy) * maps[0, :, y0, x0 + 1]
                        + (1 - fx) * fy * maps[0, :, y0 + 1, x0] + fx * fy * maps[0, :, y0 + 1, x0 + 1])
            assert torch.allclose(resampled[0, :, v, u], expected, atol=1e-5), (u, v)


def test_downsampling_averages_the_patches_a_cell_covers():
    """A finer DINOv2 grid (60 -> 40 cells, as 840 px DINOv2 vs 640 px Flux): a linear ramp in DINOv2 coordinates
    comes back as the ramp at each cell centre, away from the border, within 0.03 patch (torch's antialiasing
    filter normalises its discrete taps, which shifts a 1.5x reduction by +-0.028 patch: 0.4 px at 640 px)."""
    image = (640, 640)
    fine, coarse = dino_mapping(*image, 840), PixelMapping(image, image, (40, 40))
    assert fine.grid_size == (60, 60)
    ramp = torch.arange(60, dtype=torch.float32).view(1, 1, 1, 60).expand(1, 1, 60, 60)
    resampled = resample_to_grid(ramp, fine, coarse)[0, 0]
    centres = fine.to_feature(coarse.to_pixel(torch.stack([torch.arange(40.0), torch.zeros(40)], 1)))[:, 0]
    assert torch.allclose(resampled[5, 2:-2], centres[2:-2], atol=0.03)
    # a single bright patch spreads over the cells around it instead of vanishing between samples
    spike = torch.zeros(1, 1, 60, 60)
    spike[0, 0, 30, 31] = 1.0
    spread = resample_to_grid(spike, fine, coarse)[0, 0]
    assert float(spread.sum()) == pytest.approx((40 / 60) ** 2, rel=1e-3) and int((spread > 0).sum()) >= 4


def test_same_grid_is_left_alone_and_other_images_are_refused():
    mapping = PixelMapping((64, 48), (64, 48), (4, 3))
    maps = torch.randn(1, 2, 3, 4)
    assert resample_to_grid(maps, mapping, mapping) is maps
    with pytest.raises(DiTFInputError, match="different images"):
        resample_to_grid(maps, mapping, PixelMapping((65, 48), (64, 48), (4, 3)))


# --- normalisation and weights -------------------------------------------------------------------------------
def test_each_part_is_l2_normalised_then_weighted():
    features, patches = ditf(), dino()
    fused = fuse_dino(features, patches, dit_weight=0.3)
    assert fused.features.shape == (2, 5 + 6, 3, 4) and fused.mapping == features.mapping
    dit_part, dino_part = fused.features[:, :5], fused.features[:, 5:]
    assert torch.allclose(dit_part, 0.3 * features.features / features.features.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(dino_part, 0.7 * patches.features / patches.features.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(dit_part.norm(dim=1), torch.full((2, 3, 4), 0.3), atol=1e-6)
    assert torch.allclose(dino_part.norm(dim=1), torch.full((2, 3, 4), 0.7), atol=1e-6)


def test_fused_cosine_is_the_weighted_mean_of_the_parts_cosines():
    """cos(fused) = (a^2 cos_DiT + (1 - a)^2 cos_DINO) / (a^2 + (1 - a)^2): what the weights mean for matching."""
    features, patches, a = ditf(batch=1), dino(batch=1), 0.5
    fused = fuse_dino(features, patches, dit_weight=a).features[0].flatten(1)
    dit, dn = F.normalize(features.features[0].flatten(1), dim=0), F.normalize(patches.features[0].flatten(1), dim=0)
    expected = (a**2 * dit.T @ dit + (1 - a) ** 2 * dn.T @ dn) / (a**2 + (1 - a) ** 2)
    assert torch.allclose(F.normalize(fused, dim=0).T @ F.normalize(fused, dim=0), expected, atol=1e-5)


def test_weights_at_the_ends_give_one_model_alone():
    features, patches = ditf(batch=1), dino(batch=1)
    only_dino = fuse_dino(features, patches, dit_weight=0.0).features
    assert float(only_dino[:, :5].abs().max()) == 0.0
    assert torch.allclose(only_dino[:, 5:], F.normalize(patches.features, dim=1), atol=1e-6)


# --- joint PCA -----------------------------------------------------------------------------------------------
def test_pca_is_the_exact_principal_basis_sign_fixed_and_deterministic():
    maps = [torch.randn(2, 8, 3, 4, generator=torch.Generator().manual_seed(5)),
            torch.randn(1, 8, 5, 2, generator=torch.Generator().manual_seed(6)) * 2 + 1]
    basis = fit_joint_pca(maps, 3)
    rows = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, 8) for m in maps]).double()
    centred = rows - rows.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    assert torch.allclose(basis.mean.double(), rows.mean(dim=0), atol=1e-6)
    assert torch.allclose(basis.components.double().abs(), vh[:3].abs(), atol=1e-5)
    largest = basis.components.gather(1, basis.components.abs().argmax(dim=1, keepdim=True))
    assert bool((largest > 0).all())  # sign rule: the largest loading is positive
    projected = basis.project(maps[0])
    expected = torch.einsum("kc,bchw->bkhw", basis.components, maps[0] - basis.mean.view(1, -1, 1, 1))
    assert torch.allclose(projected, expected, atol=1e-5)
    again = fit_joint_pca([m.clone() for m in maps], 3)
    assert torch.equal(again.components, basis.components) and again.digest == basis.digest
    assert fit_joint_pca(maps[:1], 3).digest != basis.digest


def test_wide_maps_use_a_seeded_subspace_that_agrees_with_the_exact_pca():
    """With dims + 16 < C the fit iterates in a subspace: deterministic, and on data with a clear spectrum (4
    strong directions of decreasing strength + weak noise) its components are the exact PCA's."""
    generator = torch.Generator().manual_seed(0)
    directions, _ = torch.linalg.qr(torch.randn(96, 4, generator=generator))
    coords = torch.randn(300, 4, generator=generator) * torch.tensor([8.0, 6.0, 4.0, 3.0])
    rows = coords @ directions.T + 0.05 * torch.randn(300, 96, generator=generator)
    maps = [rows.T.reshape(1, 96, 15, 20)]
    basis = fit_joint_pca(maps, 4)
    _, _, vh = torch.linalg.svd(rows - rows.mean(dim=0), full_matrices=False)
    assert torch.allclose((basis.components @ vh[:4].T).abs(), torch.eye(4), atol=1e-3)
    assert torch.equal(fit_joint_pca(maps, 4).components, basis.components)


def test_pca_dims_are_checked():
    maps = [torch.randn(1, 8, 2, 2)]
    for dims in (0, 9, 4, 2.5, True):  # 4 cells allow at most 3 directions
        with pytest.raises(DiTFInputError, match="pca_dims"):
            fit_joint_pca(maps, dims)


def test_joint_fusion_shares_one_basis_and_records_it():
    first, second = ditf(batch=1, seed=0), ditf(batch=1, grid=(3, 3), image=(48, 48), seed=2)
    fused = fuse_dino_jointly([first, second], [dino(batch=1), dino(batch=1, image=(48, 48))], pca_dims=2)
    assert [f.channels for f in fused] == [2 + 6, 2 + 6]
    records = [f.settings["fusion"] for f in fused]
    assert records[0] == records[1] and records[0]["pca"]["dims"] == 2
    check_pair(fused[0], fused[1])  # same fit: matchable
    alone = fuse_dino_jointly([second], [dino(batch=1, image=(48, 48))], pca_dims=2)[0]
    with pytest.raises(DiTFInputError, match=r"fused differently \(pca 2 dims \(basis"):
        check_pair(fused[0], alone)


# --- the record and matching's checks ------------------------------------------------------------------------
def test_the_fusion_is_recorded_in_the_settings():
    features = ditf(resolution=640)
    fused = fuse_dino(features, dino())
    assert fused.settings["resolution"] == 640 and "fusion" not in features.settings
    assert fused.settings["fusion"] == {
        "recipe": "sd-dino", "dit_weight": 0.5, "dino_weight": 0.5, "dit_channels": 5, "dino_channels": 6,
        "dino": DINO_MODEL, "dino_resolution": 56, "pca": None,
    }


def test_the_record_survives_saving(tmp_path):
    fused = fuse_dino(ditf(), dino())
    loaded = DiTFeatures.load(fused.save(tmp_path / "fused.safetensors"))
    assert loaded.settings["fusion"] == fused.settings["fusion"]
    check_pair(loaded, fused)


def test_matching_refuses_fused_with_unfused_and_different_weights():
    plain = ditf(batch=1)
    fused = fuse_dino(plain, dino(batch=1))
    with pytest.raises(DiTFInputError, match="source is fused with DINOv2 test .* but target is not"):
        check_pair(fused, plain)
    with pytest.raises(DiTFInputError, match="target is fused .* but source is not"):
        match_points(plain, fused, torch.tensor([[10.0, 10.0]]))
    other = fuse_dino(plain, dino(batch=1), dit_weight=0.7)
    with pytest.raises(DiTFInputError, match=r"dit_weight 0.5 vs 0.7"):
        match_dense(fused, other)


def test_fusion_input_errors_name_the_input():
    features = ditf()
    with pytest.raises(DiTFInputError, match="DINOv2 features describe 1 images but the DiTF features 2"):
        fuse_dino(features, dino(batch=1))
    with pytest.raises(DiTFInputError, match="from 70x48 images but the DiTF features from 64x48"):
        fuse_dino(features, dino(image=(70, 48)))
    with pytest.raises(DiTFInputError, match="already fused"):
        fuse_dino(fuse_dino(features, dino()), dino())
    for weight in (float("nan"), -0.1, 1.5):
        with pytest.raises(DiTFInputError, match="dit_weight must be a number in"):
            fuse_dino(features, dino(), dit_weight=weight)
    with pytest.raises(TypeError, match="dino must be DinoFeatures"):
        fuse_dino(features, features)


def test_fused_features_match_like_any_features():
    """The same image on both sides: every fused cell's nearest neighbour is itself, fast and exact."""
    features = fuse_dino(ditf(batch=1, grid=(8, 6), image=(128, 96)), dino(batch=1, image=(128, 96), resolution=126))
    points = torch.tensor([[8.0, 8.0], [72.0, 40.0], [120.0, 88.0]])
    for mode in ("fast", "exact"):
        landed = match_points(features, features, points, mode=mode).points[0]
        assert torch.allclose(landed, points, atol=1.0), mode
    dense = match_dense(features, features)
    assert float(dense.target_confidence.min()) == 1.0
