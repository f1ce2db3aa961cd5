"""Correspondence Match, Warp / Appearance Transfer and the Massive-Activation Inspector executed in-process, as
ComfyUI calls them: outputs, the UI payload and its saved previews, VAE-encoded LATENTs, the LATENT rules, the
inspector's channels feeding Extract's discard, and the ComfyUI host's model key."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ditf_core.demo_model import DEMO_MASSIVE_CHANNELS, build_demo_dit, build_tiny_flux
from PIL import Image

import synthetic_pairs as synthetic
import tiny_models
from synthetic_pairs import SHIFT, SIZE

pytestmark = pytest.mark.comfyui

POINTS = '[{"x": 40, "y": 30}, {"x": 64, "y": 50}, {"x": 100, "y": 70}]'
EXPECTED = torch.tensor([[40.0, 30.0], [64.0, 50.0], [100.0, 70.0]]) - torch.tensor(SHIFT, dtype=torch.float32)
MATCH = dict(mode="exact", max_points=8, cycle_tolerance=2.0)
WARP = dict(strength=1.0, min_confidence=0.5)


@pytest.fixture(scope="module")
def mods(pack):
    names = ("nodes_match", "nodes_warp", "nodes_inspect", "nodes_extract", "nodes_load", "comfy_host", "model",
             "match_value", "warp_ops", "explorer_cache")
    found = {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}
    found["core"] = importlib.import_module(f"{pack.__name__}.ditf_core")
    return found


@pytest.fixture(scope="module")
def shifted(mods):
    return synthetic.pair(mods["core"])


@pytest.fixture(scope="module")
def matched(mods, shifted):
    source, target, source_image, target_image = shifted
    with torch.inference_mode():
        return mods["nodes_match"].CorrespondenceMatch.execute(
            source, target, synthetic.comfy(source_image), synthetic.comfy(target_image), POINTS, **MATCH)


@pytest.fixture(scope="module")
def flux_vae(comfy):
    import comfy.sd

    return comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))


def temp_file(info: dict) -> Path:
    import folder_paths

    assert info["type"] == "temp"
    return Path(folder_paths.get_temp_directory(), info["subfolder"], info["filename"])


# --- Correspondence Match ----------------------------------------------------------------------------------------
def test_match_outputs(mods, matched):
    target_points, match, visualization, confidence = matched.result
    landed = torch.tensor([[p["x"], p["y"]] for p in json.loads(target_points)], dtype=torch.float32)
    assert torch.allclose(landed, EXPECTED, atol=1.0)
    assert isinstance(match, mods["match_value"].CorrespondenceMatch) and match.pairs == 1
    assert visualization.shape == (1, 96, 128 + 8 + 128, 3)
    assert confidence.shape == (1, 96, 128) and float(confidence[:, 8:80, 8:100].min()) == 1.0


def test_match_ui_payload_for_the_point_editor(mods, matched):
    ui = matched.ui
    assert set(ui) == {"images", "animated", "ditf_match"}
    (entry,) = ui["ditf_match"]
    assert set(entry) == {"explorer", "mode", "source", "target", "valid", "grid"}
    assert entry["mode"] == "exact" and entry["grid"] == [16, 12] and entry["valid"] == [True] * 3
    for side in ("source", "target"):
        image = entry[side]["image"]
        assert set(image) == {"filename", "subfolder", "type"}
        with Image.open(temp_file(image)) as saved:
            assert saved.size == SIZE == (entry[side]["width"], entry[side]["height"])
    assert torch.allclose(torch.tensor(entry["target"]["points"]), EXPECTED, atol=1.0)
    assert len(entry["target"]["scores"]) == 3
    assert mods["explorer_cache"].lookup(entry["explorer"]) is not None  # the live explorer can use the pair
    with Image.open(temp_file(ui["images"][0])) as picture:
        assert picture.size == (264, 96)
    json.dumps(ui["ditf_match"], allow_nan=False)


def test_match_batches_share_previews_and_cap_the_explorer(mods):
    core = mods["core"]
    count = mods["explorer_cache"].MAX_PAIRS + 1
    source = synthetic.world_features(core)
    target = synthetic.world_features(core, SHIFT, batch=count)
    with torch.inference_mode():
        output = mods["nodes_match"].CorrespondenceMatch.execute(
            source, target, synthetic.comfy(synthetic.world_image()),
            synthetic.comfy(synthetic.world_image(SHIFT).expand(count, -1, -1, -1)), POINTS, **MATCH)
    entries = output.ui["ditf_match"]
    assert len(entries) == count == len(output.ui["images"]) and output.result[2].shape[0] == count
    assert len({json.dumps(e["source"]["image"]) for e in entries}) == 1  # the shared source image saved once
    assert len({json.dumps(e["target"]["image"]) for e in entries}) == count
    assert all(e["explorer"] for e in entries[:-1]) and entries[-1]["explorer"] is None


@pytest.mark.parametrize("widgets, message", [
    (dict(mode="bogus"), "mode must be one of fast, exact"),
    (dict(cycle_tolerance=float("nan")), "cycle_tolerance must be a finite number"),
    (dict(points='[{"x": 1}]'), "needs both 'x' and 'y'"),
    (dict(points="[[1, Infinity]]"), "NaN or infinite"),
])
def test_match_validate_inputs(mods, widgets, message):
    node = mods["nodes_match"].CorrespondenceMatch
    assert message in node.validate_inputs(**widgets)
    assert node.validate_inputs(mode="fast", cycle_tolerance=3.0, points="") is True  # empty: a mask may supply them


# --- Warp / Appearance Transfer -------------------------------------------------------------------------------------
def prepared(node, prompt: dict, node_id: str):
    """The node class as ComfyUI's executor hands it over: cloned, with its hidden inputs."""
    from comfy_api.latest import io
    from comfy_execution.graph import DynamicPrompt

    return node.PREPARE_CLASS_CLONE({io.Hidden.unique_id: node_id, io.Hidden.dynprompt: DynamicPrompt(prompt)})


def test_appearance_transfer_with_a_vae_gives_a_latent(mods, shifted, matched, flux_vae):
    match = matched.result[1]
    source_image, target_image = synthetic.comfy(shifted[2]), synthetic.comfy(shifted[3])
    warp = mods["nodes_warp"].WarpAppearanceTransfer
    with torch.inference_mode():
        image, mask, latent = warp.execute(source_image, match, "appearance", target_image=1.0 - target_image,
                                           vae=flux_vae, **WARP).result
    assert image.shape == (1, 96, 128, 3) and mask.shape == (1, 96, 128)
    assert float((image - target_image)[:, 8:80, 8:100].abs().max()) < 1e-4  # source colours on the target
    assert latent["samples"].shape == (1, 16, 12, 16)
    with torch.inference_mode():
        assert torch.allclose(latent["samples"], flux_vae.encode(image))


def test_no_vae_and_a_linked_latent_output_stops_before_the_work(mods, shifted, matched):
    match, image = matched.result[1], synthetic.comfy(shifted[2])
    warp = mods["nodes_warp"].WarpAppearanceTransfer
    linked = {"9": {"class_type": "DiTFWarp", "inputs": {}},
              "10": {"class_type": "KSampler", "inputs": {"latent_image": ["9", 2]}}}
    with pytest.raises(ValueError, match="LATENT output of Warp / Appearance Transfer \\(DiTF\\) needs a VAE"):
        prepared(warp, linked, "9").execute(image, match, "flow", **WARP)
    unlinked = {"9": {"class_type": "DiTFWarp", "inputs": {}},
                "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}}
    warped, _, latent = prepared(warp, unlinked, "9").execute(image, match, "flow", **WARP).result
    assert warped.shape == (1, 96, 128, 3)
    with pytest.raises(ValueError, match="needs a VAE"):
        latent["samples"]  # noqa: B018  (what KSampler reads, if the output gets linked while this result is cached)


@pytest.mark.parametrize("widgets, message", [
    (dict(method="bogus"), "method must be one of flow, tps, homography, appearance"),
    (dict(strength=float("nan")), "strength must be a finite number"),
    (dict(min_confidence=float("inf")), "min_confidence must be a finite number"),
])
def test_warp_validate_inputs(mods, widgets, message):
    node = mods["nodes_warp"].WarpAppearanceTransfer
    assert message in node.validate_inputs(**widgets)
    assert node.validate_inputs(method="tps", strength=0.5, min_confidence=1.0) is True


# --- Massive-Activation Inspector -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_flux(mods, flux_vae):
    """The planted demo DiT on ComfyUI's own Flux classes, wrapped by Load DiT."""
    flux = tiny_models.comfy_flux(build_demo_dit(0))
    return flux, mods["nodes_load"].LoadDiT.execute(flux, flux_vae).result[0]


def test_inspector_finds_the_planted_channels_and_they_feed_extract(mods, demo_flux):
    import comfy.utils

    _, ditf_model = demo_flux
    images = torch.rand(2, 70, 90, 3, generator=torch.Generator().manual_seed(0))
    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append((value, total)))
    try:
        with torch.inference_mode():
            output = mods["nodes_inspect"].MassiveActivationInspector.execute(
                ditf_model, images, layers="", sweep=True, t=0.26, ensemble=2, seed=0, resolution=64, ratio=100.0)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    report_image, report_json, channels = output.result
    assert steps == [(1, 2), (2, 2)]  # one pass per ensemble draw, every block captured in it
    assert sorted(int(c) for c in channels.split(",")) == sorted(DEMO_MASSIVE_CHANNELS)
    report = json.loads(report_json)
    assert report["channels_text"] == channels and report["model"]["host"] == "comfyui"
    assert report["sweep"]["layers"] == list(range(6)) and report["settings"]["layers"] == [3]
    key = mods["core"].inspect.sweep_key(report["model"]["key"], {**report["settings"], "guidance": 3.5})
    assert mods["core"].inspect.DEFAULT_CACHE.get(key) is not None  # the sweep is cached under the host's key
    assert report_image.shape[0] == 5 and report_image.shape[-1] == 3
    previews = output.ui["images"]
    assert len(previews) == 5
    for info in previews:
        with Image.open(temp_file(info)) as picture:
            grey = np.asarray(picture.convert("L"), dtype=np.float32)
            assert picture.width == 1000 and float(grey.std()) > 10.0  # a drawn plot, not a blank page
    with torch.inference_mode():
        features, _ = mods["nodes_extract"].ExtractFeatures.execute(
            ditf_model, images, layer=-1, t=0.26, ensemble=2, seed=0, resolution=64, discard=channels, mode="ditf",
        ).result
    assert sorted(features.discarded) == sorted(DEMO_MASSIVE_CHANNELS)
    assert features.settings["discard"] == [int(c) for c in channels.split(",")]


def test_inspector_rejects_layers_beyond_the_model(mods, demo_flux):
    node = mods["nodes_inspect"].MassiveActivationInspector
    assert "layers must be block numbers" in node.validate_inputs(layers="28a")
    assert "t must be a finite number" in node.validate_inputs(t=float("nan"))
    with pytest.raises(ValueError, match="block 40 in layers is out of range.*0..5"), torch.inference_mode():
        node.execute(demo_flux[1], torch.rand(1, 32, 32, 3), layers="40", sweep=False, t=0.26, ensemble=1, seed=0,
                     resolution=32, ratio=100.0)


def test_comfy_host_model_key_tells_weights_and_patches_apart(mods, demo_flux, flux_vae):
    flux, ditf_model = demo_flux
    host = mods["comfy_host"].ComfyHost
    key = ditf_model.model_key()
    assert key.startswith("flux:") and key == host.create(flux.clone(), flux_vae).model_key()  # stable, clone-proof
    same_architecture = tiny_models.comfy_flux(build_tiny_flux(0))
    assert host.create(same_architecture, flux_vae).model_key().split(":")[:2] == key.split(":")[:2]
    assert host.create(same_architecture, flux_vae).model_key() != key  # other weights, other key
    patched = flux.clone()
    name = "diffusion_model.double_blocks.0.img_mod.lin.weight"
    assert patched.add_patches({name: (torch.zeros_like(flux.model.state_dict()[name]),)}) == [name]
    assert host.create(patched, flux_vae).model_key() == f"{key}:patches-{patched.patches_uuid}"
