"""The correspondence and inspector nodes' host-agnostic helpers (match_value, warp_ops, images_io, inspection),
without ComfyUI: matches of a pair with a known shift, every warp method, batches, bad input, the UI entries, the
LATENT rules, and the inspector on the planted demo DiT."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

import synthetic_pairs as synthetic
from synthetic_pairs import SHIFT, SIZE

NODES = Path(__file__).resolve().parents[2] / "nodes"
HOST_AGNOSTIC = ("images_io.py", "match_value.py", "warp_ops.py", "inspection.py")
POINTS = [[40, 30], [64, 50], [100, 70], [30.5, 61.2]]
INTERIOR = (..., slice(8, 80), slice(8, 100))  # target pixels whose source lies well inside the source image


@pytest.fixture(scope="module")
def mods(offline_pack):
    names = ("images_io", "match_value", "warp_ops", "inspection", "model")
    found = {name: importlib.import_module(f"{offline_pack.__name__}.nodes.{name}") for name in names}
    found["core"] = importlib.import_module(f"{offline_pack.__name__}.ditf_core")
    return found


@pytest.fixture(scope="module")
def shifted(mods):
    return synthetic.pair(mods["core"])


def match(mods, shifted, points=POINTS, **options):
    source, target, source_image, target_image = shifted
    return mods["match_value"].match_features(source, target, points, source_pixels=source_image,
                                              target_pixels=target_image, **options)


def expected(points) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32) - torch.tensor(SHIFT, dtype=torch.float32)


# --- matching -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, tolerance", [("fast", 0.6 * synthetic.CELL), ("exact", 1.0)])
def test_points_land_on_the_known_shift(mods, shifted, mode, tolerance):
    result = match(mods, shifted, json.dumps([{"x": x, "y": y} for x, y in POINTS]), mode=mode)
    assert result.pairs == 1 and result.mode == mode
    assert result.source_size == SIZE and result.target_size == SIZE
    error = (result.sparse.points[0] - expected(POINTS)).norm(dim=-1)
    assert float(error.max()) <= tolerance, error
    landed = json.loads(mods["match_value"].target_points_json(result))
    assert len(landed) == len(POINTS) and all(set(p) == {"x", "y"} for p in landed)
    as_tensor = torch.tensor([[p["x"], p["y"]] for p in landed])
    assert float((as_tensor - expected(POINTS)).norm(dim=-1).max()) <= tolerance
    # dense: inside the overlap every target cell finds its source cell, mutually
    interior = result.dense.target_confidence[0, :-2, :-3]
    assert float(interior.min()) == 1.0
    assert result.features["layer"] == 3 and result.features["model"] == "synthetic"


def test_kjnodes_json_and_pairs_give_the_same_matches(mods, shifted):
    a = match(mods, shifted, '[{"x":40,"y":30},{"x":64,"y":50}]')
    b = match(mods, shifted, [[40, 30], [64, 50]])
    assert torch.equal(a.sparse.points, b.sparse.points)


def test_a_single_image_is_shared_by_every_pair(mods):
    core = mods["core"]
    source = synthetic.world_features(core)
    target = synthetic.world_features(core, SHIFT, batch=3)
    result = mods["match_value"].match_features(
        source, target, POINTS, source_pixels=synthetic.world_image(),
        target_pixels=synthetic.world_image(SHIFT).expand(3, -1, -1, -1))
    assert result.pairs == 3 and result.sparse.points.shape == (3, len(POINTS), 2)
    assert torch.equal(result.sparse.points[0], result.sparse.points[2])
    assert result.pair(2).target_confidence.shape == (1, 12, 16)


@pytest.mark.parametrize("change, message", [
    (dict(target_batch=3, source_batch=2), "source features hold 2 images but target features 3"),
    (dict(source_image_batch=2), "source_image holds 2 images but the source features 1"),
    (dict(target_size=(96, 96)), "target_image is 96x96 but the target features were extracted from images of 128x96"),
    (dict(target_layer=5), "extracted with layer=3 but target with layer=5"),
    (dict(target_model="fedcba9876543210"), "come from different models"),
])
def test_unpaired_inputs_are_refused_with_the_fix(mods, change, message):
    core = mods["core"]
    source = synthetic.world_features(core, batch=change.get("source_batch", 1))
    target_settings = {}
    if "target_layer" in change:
        target_settings["layer"] = change["target_layer"]
    if "target_model" in change:
        target_settings["model"] = {"name": "other", "config_sha256": change["target_model"]}
    target = synthetic.world_features(core, SHIFT, batch=change.get("target_batch", 1), **target_settings)
    source_image = synthetic.world_image().expand(change.get("source_image_batch", source.batch), -1, -1, -1)
    target_image = synthetic.world_image(SHIFT, size=change.get("target_size", SIZE)).expand(target.batch, -1, -1, -1)
    with pytest.raises(ValueError, match=message):
        mods["match_value"].match_features(source, target, POINTS, source_pixels=source_image,
                                           target_pixels=target_image)


@pytest.mark.parametrize("points, message", [
    ("[]", "points is empty: click points on the source image"),
    ("", "points is empty"),
    ('[{"x": 500, "y": 10}]', r"points\[0\] = \(500, 10\) lies outside the 128x96 source image"),
    ('[{"x": -3, "y": 10}]', "lies outside"),
    ([[float("nan"), 3.0]], "NaN"),
    ('[{"x": NaN, "y": 3}]', "NaN"),
    ('[{"x": 1}]', "needs both 'x' and 'y'"),
    ("[{x: 1}]", "not valid JSON"),
])
def test_bad_points_are_refused(mods, shifted, points, message):
    with pytest.raises(ValueError, match=message):
        match(mods, shifted, points)


def test_a_source_mask_supplies_evenly_spread_points(mods, shifted):
    mask = torch.zeros(1, 96, 128)
    mask[:, 30:60, 40:90] = 1.0
    result = match(mods, shifted, "[]", source_mask=mask, max_points=6, mode="exact")
    points = result.sparse.source_points[0]
    assert points.shape == (6, 2) and bool(result.sparse.valid.all())
    assert bool(((points[:, 0] >= 42) & (points[:, 0] <= 87) & (points[:, 1] >= 32) & (points[:, 1] <= 57)).all())
    spacing = torch.cdist(points, points) + torch.eye(6) * 1e9
    assert float(spacing.min()) >= 8.0  # spread over the 50 x 30 rectangle (about 1/6 of it each), not clumped
    assert torch.allclose(result.sparse.points[0], points - torch.tensor(SHIFT, dtype=torch.float32), atol=1.0)
    again = match(mods, shifted, "[]", source_mask=mask, max_points=6, mode="exact")
    assert torch.equal(again.sparse.source_points, result.sparse.source_points)  # deterministic


def test_points_outside_the_source_mask_are_invalid_and_left_out_of_the_json(mods, shifted):
    mask = torch.zeros(1, 96, 128)
    mask[:, :, :70] = 1.0
    result = match(mods, shifted, POINTS, source_mask=mask)
    assert result.sparse.valid[0].tolist() == [True, True, False, True]
    assert len(json.loads(mods["match_value"].target_points_json(result))) == 3


def test_a_target_mask_keeps_matches_inside_it(mods, shifted):
    mask = torch.zeros(1, 96, 128)
    mask[:, 48:, :] = 1.0
    result = match(mods, shifted, POINTS, target_mask=mask, mode="exact")
    assert bool((result.sparse.points[0, :, 1] >= 47.5).all())
    assert float(result.dense.target_confidence[0, :6].max()) == 0.0  # no confidence outside the mask


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(1, 96, 128), "source_mask allows no"),
    (torch.ones(1, 50, 50), "source_mask is 50x50 but must match its image"),
    (torch.full((1, 96, 128), float("nan")), "NaN"),
])
def test_unusable_masks_are_refused(mods, shifted, mask, message):
    with pytest.raises(ValueError, match=message):
        match(mods, shifted, "[]", source_mask=mods["images_io"].mask_batch(mask, "source_mask"))


def test_ui_entry_has_the_frontend_contract_and_is_json(mods, shifted):
    result = match(mods, shifted, POINTS)
    saved = {"filename": "a.png", "subfolder": "", "type": "temp"}
    entry = mods["match_value"].ui_entry(result, 0, explorer="ab" * 16, source_image=saved, target_image=saved)
    assert set(entry) == {"explorer", "mode", "source", "target", "valid", "grid"}
    assert set(entry["source"]) == {"image", "width", "height", "points"}
    assert set(entry["target"]) == {"image", "width", "height", "points", "scores"}
    assert entry["source"]["image"] == saved and (entry["target"]["width"], entry["target"]["height"]) == SIZE
    assert entry["grid"] == [16, 12] and entry["valid"] == [True] * 4 and entry["mode"] == "fast"
    assert entry["source"]["points"][3] == [30.5, 61.2]
    assert len(entry["target"]["points"]) == len(entry["target"]["scores"]) == 4
    assert json.loads(json.dumps(entry, allow_nan=False)) == entry


def test_match_pictures_put_both_images_side_by_side(mods, shifted):
    result = match(mods, shifted, POINTS)
    source_image, target_image = shifted[2], shifted[3]
    pictures = mods["match_value"].match_pictures(result, source_image, target_image)
    assert len(pictures) == 1 and pictures[0].size == (128 + 8 + 128, 96)
    batch = mods["images_io"].pictures_to_image(pictures)
    assert batch.shape == (1, 96, 264, 3) and 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0


def test_pictures_of_different_sizes_are_padded_with_white(mods):
    from PIL import Image

    black = (0, 0, 0)
    batch = mods["images_io"].pictures_to_image([Image.new("RGB", (30, 10), black), Image.new("RGB", (20, 40), black)])
    assert batch.shape == (2, 40, 30, 3)
    assert float(batch[0, :10, :30].max()) == 0.0 and float(batch[0, 10:].min()) == 1.0
    assert float(batch[1, :, 20:].min()) == 1.0


# --- warping ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def matched(mods, shifted):
    return match(mods, shifted, POINTS)


@pytest.mark.parametrize("method, tolerance", [("flow", 1e-4), ("tps", 2e-3), ("homography", 5e-3)])
def test_warps_reproduce_the_target_layout(mods, shifted, matched, method, tolerance):
    source_image, target_image = shifted[2], shifted[3]
    result = mods["warp_ops"].warp_with_match(matched, source_image, method, min_confidence=0.5)
    assert result.image.shape == (1, 3, 96, 128) and result.mask.shape == (1, 96, 128)
    assert float((result.image - target_image)[INTERIOR].abs().mean()) < tolerance
    assert float(result.mask[INTERIOR].min()) > 0.99  # valid wherever the source covers the target
    if method != "flow":
        assert result.control_points[0] >= 100  # the RANSAC inliers among ~180 confident cells


def test_appearance_gives_the_target_the_source_colours_by_strength(mods, shifted, matched):
    source_image, target_image = shifted[2], shifted[3]
    inverted = 1.0 - target_image  # same structure, other colours
    full = mods["warp_ops"].warp_with_match(matched, source_image, "appearance", target_image=inverted, strength=1.0)
    assert float((full.image - target_image)[INTERIOR].abs().max()) < 1e-4
    none = mods["warp_ops"].warp_with_match(matched, source_image, "appearance", target_image=inverted, strength=0.0)
    assert torch.allclose(none.image, inverted)
    half = mods["warp_ops"].warp_with_match(matched, source_image, "appearance", target_image=inverted, strength=0.5)
    assert torch.allclose(half.image[INTERIOR], 0.5 * (inverted + target_image)[INTERIOR], atol=1e-4)


@pytest.mark.parametrize("method", ["flow", "tps", "homography", "appearance"])
def test_a_source_mask_is_carried_onto_the_target(mods, shifted, matched, method):
    source_mask = torch.zeros(1, 96, 128)
    source_mask[:, 30:60, 40:90] = 1.0
    expected_mask = torch.zeros(1, 96, 128)
    expected_mask[:, 22:52, 24:74] = 1.0
    result = mods["warp_ops"].warp_with_match(matched, shifted[2], method, target_image=shifted[3], mask=source_mask)
    assert float((result.mask - expected_mask).abs().mean()) < 0.01


def test_warp_batches_pair_up_or_broadcast(mods, shifted, matched):
    edits = torch.stack([shifted[2][0], 1.0 - shifted[2][0], shifted[2][0] * 0.5])
    result = mods["warp_ops"].warp_with_match(matched, edits, "flow")
    assert result.image.shape == (3, 3, 96, 128)
    assert torch.allclose(result.image[1][INTERIOR[1:]], 1.0 - result.image[0][INTERIOR[1:]], atol=1e-5)
    with pytest.raises(ValueError, match="batch sizes do not pair up.*image 3.*target_image 2"):
        mods["warp_ops"].warp_with_match(matched, edits, "appearance", target_image=shifted[3].expand(2, -1, -1, -1))


@pytest.mark.parametrize("call, message", [
    (dict(method="appearance"), "method appearance needs target_image"),
    (dict(method="bogus"), "method must be one of flow, tps, homography, appearance"),
    (dict(image=torch.rand(1, 3, 64, 64)), "image is 64x64 but the match was made for source images of 128x96"),
    (dict(method="appearance", target_image=torch.rand(1, 3, 10, 10)), "target_image is 10x10"),
    (dict(mask=torch.ones(1, 10, 10)), "must be a SOURCE mask of 128x96"),
])
def test_warp_input_errors_say_what_to_connect(mods, shifted, matched, call, message):
    call = {"image": shifted[2], "method": "flow", **call}
    with pytest.raises(ValueError, match=message):
        mods["warp_ops"].warp_with_match(matched, call.pop("image"), call.pop("method"), **call)


def test_too_few_confident_matches_for_a_fit_is_explained(mods, shifted):
    tiny = torch.zeros(1, 96, 128)
    tiny[:, 40:56, 40:56] = 1.0  # 2 x 2 target cells
    result = match(mods, shifted, POINTS[:1], target_mask=tiny)
    with pytest.raises(ValueError, match="only [0-4] dense matches reach min_confidence.*or use method flow"):
        mods["warp_ops"].warp_with_match(result, shifted[2], "homography")


def test_missing_latent_stops_its_consumer_with_the_fix(mods):
    warp_ops = mods["warp_ops"]
    latent = warp_ops.MissingLatent(warp_ops.NO_VAE_MESSAGE)
    for reader in (lambda value: value["samples"], lambda value: value.copy()["samples"]):
        with pytest.raises(ValueError, match="LATENT output of Warp / Appearance Transfer \\(DiTF\\) needs a VAE"):
            reader(latent)
    assert latent.get("batch_index") is None and "samples" not in latent


def test_output_links_are_found_in_api_prompts_and_dynamic_prompts(mods):
    linked = mods["warp_ops"].output_is_linked
    prompt = {"5": {"class_type": "DiTFWarp", "inputs": {}},
              "6": {"class_type": "KSampler", "inputs": {"latent_image": ["5", 2], "seed": 3}},
              "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}}
    assert linked(prompt, "5", 2) is True and linked(prompt, "5", 1) is False and linked(prompt, "7", 0) is False

    class Dynamic:  # the two methods of comfy_execution.graph.DynamicPrompt used
        def all_node_ids(self):
            return prompt.keys()

        def get_node(self, key):
            return prompt[key]

    assert linked(Dynamic(), 5, 2) is True and linked(Dynamic(), "5", 1) is False
    assert linked(None, "5", 2) is None and linked(prompt, None, 2) is None


def test_broadcast_rules(mods):
    io_ = mods["images_io"]
    assert io_.broadcast_batch({"a": 1, "b": 4, "c": 1}) == 4 and io_.broadcast_batch({"a": 1}) == 1
    assert [io_.pick(i, 1) for i in range(3)] == [0, 0, 0] and io_.pick(2, 3) == 2
    assert io_.mask_batch(torch.ones(5, 6), "m").shape == (1, 5, 6)
    with pytest.raises(ValueError, match="IMAGE"):
        io_.mask_batch(torch.ones(1, 5, 6, 3), "m")


# --- inspector ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_model(mods):
    model = mods["model"]
    return model.DiTFModel(model.DiffusersHost(mods["core"].DiTFPipeline.demo()))


def test_layers_text(mods, demo_model):
    parse = mods["inspection"].parse_layers
    assert parse("", demo_model) == [demo_model.defaults.layer] == parse("-1", demo_model)
    assert parse("4, 2", demo_model) == [2, 4] and parse(" 3 ", demo_model) == [3]
    assert parse("1; 2") == [1, 2]
    with pytest.raises(ValueError, match="layers must be block numbers"):
        parse("28a")
    with pytest.raises(ValueError, match="block 9 in layers is out of range.*0..5"):
        parse("9", demo_model)


def test_inspector_finds_the_planted_channels_and_caches_the_sweep(mods, demo_model):
    from ditf_core.demo_model import DEMO_MASSIVE_CHANNELS

    inspection_mod, core = mods["inspection"], mods["core"]
    cache = core.inspect.SweepCache()
    pixels = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    result = inspection_mod.inspect_model(demo_model, pixels, layers=[3], sweep=True, cache=cache, t=0.26, ensemble=2,
                                          resolution=64, seed=0)
    assert sorted(result.channels) == sorted(DEMO_MASSIVE_CHANNELS)
    assert result.channels_text in ("13, 41", "41, 13")
    report = json.loads(json.dumps(result.report))
    assert report["settings"]["conditioning"] == "zero" and report["model"]["host"] == "diffusers"
    assert report["sweep"]["layers"] == list(range(6)) and report["sweep"]["first_massive_layer"] == 2
    transformer = demo_model.host.pipeline.transformer
    assert report["model"]["key"] == core.inspect.model_key(transformer)  # the diffusers host's own cache key
    found = core.inspect.massive_channels_for(transformer, 3, cache=cache, resolution=64)
    assert sorted(found) == sorted(DEMO_MASSIVE_CHANNELS)
    assert set(result.figures) == {"layer3_magnitudes", "layer3_surface", "layer3_gate", "layer3_pca", "sweep"}
    batch = mods["images_io"].pictures_to_image(list(result.figures.values()))
    assert batch.shape[0] == 5 and float(batch.std()) > 0.05


def test_inspector_without_sweep_captures_only_its_layers(mods, demo_model):
    pixels = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    result = mods["inspection"].inspect_model(demo_model, pixels, layers=[1, 4], sweep=False, ensemble=1, resolution=32)
    assert result.sweep is None and result.key is None and "sweep" not in result.figures
    assert result.report["settings"]["captured_layers"] == [1, 4]
    assert result.channels_text == "none"  # block 1 comes before the planted block writes them


# --- import rules ---------------------------------------------------------------------------------------------------
def test_the_new_helpers_never_import_comfyui():
    from test_offline import imported_modules

    for name in HOST_AGNOSTIC:
        imported = imported_modules(NODES / name)
        assert not {m for m in imported if m.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "server")}, name
        assert not {m for m in imported if m.split(".")[0] == "ditf_core"}, name  # relative, the pack's own copy

