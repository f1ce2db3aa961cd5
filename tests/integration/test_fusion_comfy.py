"""Fuse DINOv2 and Co-Segment executed in-process as ComfyUI calls them, with ComfyUI's own DINOv2 class
(``comfy.image_encoders.dino2.Dinov2Model`` inside a ``comfy.clip_vision.ClipVisionModel``) built from a tiny config:
parity with transformers on the same weights, fused features through Correspondence Match and Warp, co-segment
masks and preview, and bad inputs refused with errors that name them."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import synthetic_pairs as synthetic
import tiny_dino
from synthetic_pairs import SHIFT

pytestmark = pytest.mark.comfyui

POINTS = '[{"x": 40, "y": 30}, {"x": 64, "y": 50}, {"x": 100, "y": 70}]'
EXPECTED = torch.tensor([[40.0, 30.0], [64.0, 50.0], [100.0, 70.0]]) - torch.tensor(SHIFT, dtype=torch.float32)
FUSE = dict(dit_weight=0.5, dino_resolution=126, pca_dims=0)
COSEGMENT = dict(clusters=2, seed=0, iterations=50, cluster=1)


@pytest.fixture(scope="module")
def mods(pack):
    names = ("nodes_fusion", "nodes_cosegment", "dino_comfy", "nodes_match", "nodes_warp")
    found = {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}
    found["core"] = importlib.import_module(f"{pack.__name__}.ditf_core")
    found["fusion"] = importlib.import_module(f"{pack.__name__}.ditf_core.fusion")
    return found


@pytest.fixture(scope="module")
def dinov2(comfy, tmp_path_factory):
    """(transformers model, ComfyUI CLIP_VISION) with the same tiny random weights."""
    model = tiny_dino.tiny_dinov2()
    folder = tmp_path_factory.mktemp("tiny_dinov2")
    state = tiny_dino.dinov2_checkpoint(model, folder)
    return model, tiny_dino.comfy_clip_vision(tiny_dino.comfy_dinov2_config(), state, folder)


@pytest.fixture(scope="module")
def clip_vision(comfy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip_vision")
    return tiny_dino.comfy_clip_vision(tiny_dino.TINY_CLIP_VISION, tiny_dino.clip_vision_state(), folder)


@pytest.fixture(scope="module")
def pair(mods):
    return synthetic.pair(mods["core"])


def fuse(mods, features, clip_vision, pixels, **overrides):
    with torch.inference_mode():
        return mods["nodes_fusion"].FuseDINOv2.execute(features, clip_vision, synthetic.comfy(pixels),
                                                       **{**FUSE, **overrides})


# --- ComfyUI's DINOv2 ----------------------------------------------------------------------------------------------
def test_comfyui_dinov2_gives_what_transformers_gives_on_the_same_weights(mods, dinov2):
    model, clip_vision = dinov2
    assert isinstance(clip_vision.model, mods["dino_comfy"].ComfyDinov2) and clip_vision.dtype == torch.float16
    pixels = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = mods["dino_comfy"].encode_dinov2(clip_vision, pixels, resolution=98)
    assert ours.features.shape == (2, 32, 5, 7) and ours.mapping.grid_size == (7, 5)
    # ComfyUI keeps the weights in float16 and computes in float32: compare with transformers on the same rounding
    rounded = tiny_dino.tiny_dinov2()
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    reference = mods["fusion"].TransformersDino(rounded, device="cpu", dtype=torch.float32)
    expected = reference.encode(pixels, resolution=98)
    assert torch.allclose(ours.features, expected.features, atol=1e-4, rtol=1e-4)
    # the record is host-neutral: the same checkpoint, the same description (float32 weights digest as float16)
    original = mods["fusion"].TransformersDino(model, device="cpu")
    assert ours.model == original.describe() and ours.model["name"] == "DINOv2 32-wide"


# --- Fuse DINOv2 ---------------------------------------------------------------------------------------------------
def test_fuse_node_outputs_fused_features_with_their_record(mods, dinov2, pair):
    source, _, source_image, _ = pair
    out = fuse(mods, source, dinov2[1], source_image)
    fused, preview = out.result
    assert fused.features.shape == (1, 64 + 32, 12, 16) and fused.mapping == source.mapping
    record = fused.settings["fusion"]
    assert record["recipe"] == "sd-dino" and record["dit_weight"] == 0.5 and record["dino_resolution"] == 126
    assert record["dino"]["name"] == "DINOv2 32-wide" and record["pca"] is None
    assert preview.shape == (1, 96, 128, 3) and out.ui.as_dict()["images"]
    dit_norm = fused.features[:, :64].norm(dim=1)
    assert torch.allclose(dit_norm, torch.full_like(dit_norm, 0.5), atol=1e-5)
    reduced = fuse(mods, source, dinov2[1], source_image, pca_dims=8).result[0]
    assert reduced.channels == 8 + 32 and reduced.settings["fusion"]["pca"]["dims"] == 8


def test_fused_features_go_through_correspondence_match_and_warp(mods, dinov2, pair):
    """Both sides fused the same way: the planted correspondence is still found (the DiT part carries it; the tiny
    random DINOv2 has no semantics) and the match drives Warp."""
    source, target, source_image, target_image = pair
    fused_source = fuse(mods, source, dinov2[1], source_image, dit_weight=0.8).result[0]
    fused_target = fuse(mods, target, dinov2[1], target_image, dit_weight=0.8).result[0]
    with torch.inference_mode():
        matched = mods["nodes_match"].CorrespondenceMatch.execute(
            fused_source, fused_target, synthetic.comfy(source_image), synthetic.comfy(target_image), POINTS,
            mode="exact", max_points=8, cycle_tolerance=2.0)
        target_points, match, _, confidence = matched.result
        warped = mods["nodes_warp"].WarpAppearanceTransfer.execute(
            synthetic.comfy(source_image), match, "flow", 1.0, 0.5, target_image=synthetic.comfy(target_image))
    landed = torch.tensor([[p["x"], p["y"]] for p in json.loads(target_points)], dtype=torch.float32)
    assert torch.allclose(landed, EXPECTED, atol=synthetic.CELL)
    assert float(confidence.mean()) > 0.5
    image, mask, _ = warped.result
    assert image.shape == (1, 96, 128, 3) and mask.shape == (1, 96, 128)


def test_fuse_refuses_a_clip_vision_that_is_not_dinov2(mods, clip_vision, pair):
    source, _, source_image, _ = pair
    with pytest.raises(ValueError, match="clip_vision holds a CLIP vision model .* not DINOv2; Fuse DINOv2 needs a "
                       "DINOv2 vision model"):
        fuse(mods, source, clip_vision, source_image)
    with pytest.raises(TypeError, match="clip_vision must be a CLIP_VISION"):
        fuse(mods, source, "not a model", source_image)


def test_fuse_refuses_other_images_and_bad_widgets(mods, dinov2, pair):
    source, _, source_image, _ = pair
    with pytest.raises(ValueError, match="image holds 2 images but the features 1"):
        fuse(mods, source, dinov2[1], source_image.expand(2, -1, -1, -1))
    with pytest.raises(ValueError, match="image is 64x96 but the features were extracted from images of 128x96"):
        fuse(mods, source, dinov2[1], source_image[..., :64])
    node = mods["nodes_fusion"].FuseDINOv2
    assert "dit_weight must be a number in [0, 1]" in node.validate_inputs(dit_weight=float("nan"))
    assert node.validate_inputs(dit_weight=0.3, dino_resolution=840, pca_dims=0) is True
    fused = fuse(mods, source, dinov2[1], source_image).result[0]
    with pytest.raises(ValueError, match="already fused"):
        fuse(mods, fused, dinov2[1], source_image)


def test_match_refuses_fused_with_unfused(mods, dinov2, pair):
    source, target, source_image, target_image = pair
    fused = fuse(mods, source, dinov2[1], source_image).result[0]
    with pytest.raises(ValueError, match="source is fused with DINOv2 32-wide .* but target is not"):
        mods["nodes_match"].CorrespondenceMatch.execute(
            fused, target, synthetic.comfy(source_image), synthetic.comfy(target_image), POINTS, mode="fast",
            max_points=8, cycle_tolerance=2.0)


# --- Co-Segment ----------------------------------------------------------------------------------------------------
def halves(core, batch=3):
    """Features whose left half points one way and right half another, with the split moving per image: two
    planted groups, the left one larger. Returns (features, images [B, 3, 48, 64])."""
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=1)
    maps = torch.empty(batch, 16, 6, 8)
    for i in range(batch):
        split = 5 + (i % 2)
        maps[i, :, :, :split] = directions[0, :, None, None]
        maps[i, :, :, split:] = directions[1, :, None, None]
    maps += 0.05 * torch.randn(maps.shape, generator=generator)
    mapping = core.mapping.PixelMapping((64, 48), (128, 96), (8, 6))
    return core.features.DiTFeatures(maps, mapping, synthetic.settings()), torch.rand(batch, 3, 48, 64)


def cosegment(mods, features, image=None, foreground=None, **overrides):
    with torch.inference_mode():
        return mods["nodes_cosegment"].CoSegment.execute(features, **{**COSEGMENT, **overrides}, image=image,
                                                         foreground=foreground)


def test_cosegment_node_masks_preview_and_ordering(mods):
    features, pixels = halves(mods["core"])
    out = cosegment(mods, features, synthetic.comfy(pixels))
    cluster_mask, masks, preview = out.result
    assert cluster_mask.shape == (3, 48, 64) and masks.shape == (2 * 3, 48, 64) and preview.shape == (3, 48, 64, 3)
    for i, split in enumerate((5, 6, 5)):
        assert float(masks[0 * 3 + i, :, : split * 8].min()) == 1.0 and float(masks[0 * 3 + i, :, split * 8:].max()) == 0
        assert torch.equal(masks[1 * 3 + i], 1.0 - masks[i])  # cluster-major: cluster j of image i at j * B + i
    assert torch.equal(cluster_mask, masks[3:6])  # cluster=1
    assert out.ui.as_dict()["images"]
    plain = cosegment(mods, features).result[2]  # no image: colours only, the same ids in the same colour
    assert torch.allclose(plain[0, 0, 0], plain[1, 0, 0]) and not torch.allclose(plain[0, 0, 0], plain[0, 0, -1])


def test_cosegment_foreground_and_fused_features(mods, dinov2, pair):
    source, _, source_image, _ = pair
    fused = fuse(mods, source, dinov2[1], source_image).result[0]
    foreground = torch.zeros(1, 96, 128)
    foreground[:, :, :64] = 1.0
    _, masks, _ = cosegment(mods, fused, synthetic.comfy(source_image), foreground=foreground, clusters=3).result
    assert masks.shape == (3, 96, 128) and float(masks[:, :, 64:].max()) == 0.0
    assert torch.equal(masks[:, :, :64].sum(dim=0), torch.ones(96, 64))


def test_cosegment_bad_inputs(mods):
    features, pixels = halves(mods["core"], batch=2)
    node = mods["nodes_cosegment"].CoSegment
    assert node.validate_inputs(clusters=3, cluster=3) == "cluster must be below clusters (3), got 3"
    with pytest.raises(ValueError, match=r"cluster must be in \[0, 1\], got 2"):
        cosegment(mods, features, cluster=2)
    with pytest.raises(ValueError, match="image holds 1 images but the features 2"):
        cosegment(mods, features, synthetic.comfy(pixels[:1]))
    tiny = mods["core"].features.DiTFeatures(torch.randn(1, 16, 2, 2), mods["core"].mapping.PixelMapping(
        (16, 16), (32, 32), (2, 2)))
    with pytest.raises(ValueError, match="clusters=5 but there are only 4 feature cells"):
        cosegment(mods, tiny, clusters=5, cluster=0)
