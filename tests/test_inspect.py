"""The Massive-Activation Inspector on tiny models with planted massive activations (and clean ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import PLANTED, conditioning

from ditf_core import DiTFPipeline, capture_ensemble
from ditf_core.demo_model import build_tiny_flux, build_tiny_sd3, build_tiny_vae, plant_massive_activations
from ditf_core.families import Modulation
from ditf_core.inspect import (
    SweepCache,
    channel_stats,
    gate_alignment,
    inspect_captures,
    inspect_pipeline,
    massive_channels_for,
    model_key,
    sweep_captures,
    sweep_pipeline,
    table1,
)
from ditf_core.inspect.plots import magnitude_surface_plot
from ditf_core.pipeline import parse_channel_list
from ditf_core.recipe import EnsembleCapture, apply_recipe
from ditf_core.samples import sample_scene

DEPTH = 6  # tiny Flux: 2 double + 4 single blocks


def capture_all(model, batch: int = 2, size: int = 16, seed: int = 0):
    """Every block of ``model`` captured in one pass over ``batch`` random latents (E = 2)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, size, size, generator=generator)
    noise = torch.randn(2, batch, 16, size, size, generator=generator)
    text, pooled = conditioning(model)
    depth = len(model.transformer_blocks) + len(getattr(model, "single_transformer_blocks", []))
    return capture_ensemble(model, latents, t=0.26, layers=range(depth), text_embeds=text, pooled=pooled, noise=noise)


@pytest.fixture(scope="module")
def planted_captures():
    return capture_all(plant_massive_activations(build_tiny_flux(seed=0), 1, PLANTED))


@pytest.fixture(scope="module")
def planted_inspection(planted_captures):
    return inspect_captures(planted_captures, layers=[3], settings={"t": 0.26}, model={"name": "planted", "split": 2})


def lower_median(values: np.ndarray) -> float:
    """torch's median: the lower of the two middle values for an even count."""
    ordered = np.sort(values, axis=None)
    return float(ordered[(ordered.size - 1) // 2])


def hand_ratios(hidden: torch.Tensor) -> tuple[np.ndarray, float]:
    magnitude = np.abs(hidden.numpy()).reshape(-1, hidden.shape[-1])
    per_channel = np.array([lower_median(magnitude[:, c]) for c in range(magnitude.shape[1])])
    overall = lower_median(magnitude)
    return per_channel / overall, overall


# --- statistics -----------------------------------------------------------------------------------------------
def test_planted_channels_are_found_with_the_right_ratios(planted_captures, planted_inspection):
    entry = planted_inspection.report["layers"][0]
    assert entry["layer"] == 3 and sorted(entry["massive"]["channels"]) == sorted(PLANTED)
    ratios, overall = hand_ratios(planted_captures[3].hidden)
    assert entry["map_median"] == pytest.approx(overall, rel=1e-5)
    for channel, ratio in zip(entry["massive"]["channels"], entry["massive"]["ratios"]):
        assert ratio == pytest.approx(ratios[channel], rel=1e-5)
        assert ratio > 1000
    assert entry["massive"]["ratios"][0] >= entry["massive"]["ratios"][1]  # largest first
    assert planted_inspection.channels_text == ", ".join(map(str, entry["massive"]["channels"]))
    assert parse_channel_list(planted_inspection.channels_text) == planted_inspection.channels


def test_table1_equals_a_hand_computation():
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 31, 25, generator=generator) * torch.linspace(0.5, 3.0, 25)  # distinct channel scales
    hidden[..., 7] += 400.0
    hidden[..., 19] -= 250.0
    magnitude = np.abs(hidden[0].numpy())  # 31 tokens, 775 values: odd counts, every median is exact
    medians = np.median(magnitude, axis=0)
    ranked = np.argsort(-medians, kind="stable")
    result = table1(channel_stats(hidden))
    assert result["map_median"] == pytest.approx(np.median(magnitude), rel=1e-5)
    assert [row["rank"] for row in result["rows"]] == [1, 2, 10, 20]
    for row in result["rows"]:
        channel = int(ranked[row["rank"] - 1])
        assert row["channel"] == channel
        assert row["mean"] == pytest.approx(magnitude[:, channel].mean(), rel=1e-5)
        assert row["std"] == pytest.approx(magnitude[:, channel].std(ddof=0), rel=1e-5)
        assert row["median"] == pytest.approx(medians[channel], rel=1e-5)
    assert [row["channel"] for row in result["rows"][:2]] == [7, 19]
    assert [row["rank"] for row in table1(channel_stats(hidden[..., :12]))["rows"]] == [1, 2, 10]  # 20 > C: left out


def test_table1_of_planted_channels_shows_large_values_with_little_spread(planted_captures, planted_inspection):
    rows = planted_inspection.report["layers"][0]["table1"]["rows"]
    magnitude = np.abs(planted_captures[3].hidden.numpy()).reshape(-1, 64)
    assert {rows[0]["channel"], rows[1]["channel"]} == set(PLANTED)
    for row in rows:
        assert row["mean"] == pytest.approx(magnitude[:, row["channel"]].mean(), rel=1e-5)
        assert row["std"] == pytest.approx(magnitude[:, row["channel"]].std(), rel=1e-4)
    assert rows[0]["mean"] > 100 and rows[0]["std"] < 0.05 * rows[0]["mean"]  # paper Table 1: little spatial variance
    assert rows[2]["mean"] < 10 * planted_inspection.report["layers"][0]["map_median"]


def test_adaln_comparison_matches_the_recipe_and_finds_weakly_massive_channels(planted_captures, planted_inspection):
    adaln = planted_inspection.report["layers"][0]["adaln"]
    capture = planted_captures[3]
    after, _ = hand_ratios(apply_recipe(capture.hidden, capture.modulation))
    after_discard, _ = hand_ratios(apply_recipe(capture.hidden, capture.modulation, discard=list(PLANTED)))
    assert adaln["massive_channels"] == planted_inspection.channels
    assert adaln["ratios_after"] == pytest.approx([after[c] for c in adaln["massive_channels"]], rel=1e-4)
    assert adaln["max_ratio_after"] == pytest.approx(after.max(), rel=1e-4)
    assert adaln["max_ratio_after_discard"] == pytest.approx(after_discard.max(), rel=1e-4)
    assert all(a < b for a, b in zip(adaln["ratios_after"], adaln["ratios_before"]))  # AdaLN tames them...
    assert adaln["massive_after"] == []
    assert sorted(adaln["weakly_massive"]["channels"]) == sorted(PLANTED)  # ...but they stay weakly massive
    assert sorted(adaln["weakly_massive"]["channels"]) == sorted(np.flatnonzero(after >= 10.0).tolist())
    assert adaln["max_ratio_after_discard"] < 10.0  # discard removes them


# --- gate alignment -------------------------------------------------------------------------------------------
def test_gate_alignment_on_a_hand_made_gate():
    gate = torch.tensor([[0.1, -0.9, 0.2, 0.05, 0.8, 0.0], [0.1, -0.7, 0.2, 0.05, 0.6, 0.0]])
    result = gate_alignment(gate, [4, 3], block=7)
    assert result["block"] == 7 and result["k"] == 2
    assert result["top_channels"] == [1, 4] and result["top_abs_gate"] == pytest.approx([0.8, 0.7])
    assert result["overlap"] == [4] and result["overlap_fraction"] == 0.5
    assert result["massive_gate_ranks"] == [2, 5]
    assert gate_alignment(gate, [4, 3], k=3)["overlap"] == [4]
    assert gate_alignment(gate, [])["overlap_fraction"] is None


@pytest.mark.parametrize("block, channels", [(1, PLANTED), (3, (5, 60))])
def test_gate_alignment_finds_the_planted_gate_channels_at_the_writer_block(block, channels):
    sweep = sweep_captures(capture_all(plant_massive_activations(build_tiny_flux(seed=0), block, channels), batch=1))
    assert sweep.first_massive_layer == block + 1 and sweep.writer_block == block
    writer = sweep.writer_gate()
    assert writer["block"] == block and sorted(writer["top_channels"]) == sorted(channels)
    assert writer["overlap_fraction"] == 1.0


def test_without_the_plant_the_same_gate_does_not_single_out_those_channels():
    clean = sweep_captures(capture_all(build_tiny_flux(seed=0), batch=1))
    top = gate_alignment(clean.gates[clean.row(1)], list(PLANTED))["top_channels"]
    assert not set(top) & set(PLANTED)


# --- sweep ----------------------------------------------------------------------------------------------------
def test_sweep_marks_exactly_the_planted_layers(planted_inspection):
    sweep = planted_inspection.sweep
    assert sweep.layers == tuple(range(DEPTH))
    assert sweep.massive_layers == [2, 3, 4, 5]
    for layer in range(DEPTH):
        expected = sorted(PLANTED) if layer >= 2 else []
        assert sorted(sweep.channels(layer)) == expected
        assert sorted(sweep.stable_channels(layer)) == expected
        assert sweep.frequency[layer].sum() == len(expected)  # massive in every image, nothing else ever
    data = planted_inspection.report["sweep"]
    assert data["massive_layers"] == [2, 3, 4, 5] and data["writer_block"] == 1
    assert data["per_layer"][3]["stability"] == {"channels": sorted(PLANTED, key=lambda c: -sweep.ratios[3, c]),
                                                 "fractions": [1.0, 1.0]}


def test_stability_counts_images_separately():
    hidden = torch.ones(4, 9, 6)
    hidden[:, :, 1] = 500.0  # massive in every image
    hidden[0, :, 4] = 500.0  # massive in one image of four
    zeros = torch.zeros(4, 6)
    sweep = sweep_captures({0: EnsembleCapture(hidden, Modulation(zeros, zeros, zeros), (3, 3))})
    assert sweep.frequency[0, 1] == 1.0 and sweep.frequency[0, 4] == 0.25
    assert sweep.stable_channels(0) == [1]


@pytest.mark.parametrize("build", [lambda: build_tiny_flux(seed=0), lambda: build_tiny_sd3(seed=0, sd35=True)])
def test_a_clean_random_model_reports_no_massive_channels(build):
    captures = capture_all(build(), batch=1)
    inspection = inspect_captures(captures, layers=[1, 3], plots=False)
    for entry in inspection.report["layers"]:
        assert entry["massive"]["channels"] == [] and entry["gate"]["top_channels"] == []
        assert entry["massive"]["ratios"] == []
    assert inspection.channels == [] and inspection.channels_text == "none"
    assert inspection.sweep.massive_layers == [] and inspection.report["sweep"]["writer_gate"] is None


# --- pictures -------------------------------------------------------------------------------------------------
def red_pixels(picture) -> int:
    array = np.asarray(picture).astype(int)
    return int(((abs(array[..., 0] - 214) < 30) & (array[..., 1] < 80) & (array[..., 2] < 80)).sum())


def test_pngs_have_the_expected_size_and_are_not_blank(planted_captures, planted_inspection, tmp_path):
    images = torch.rand(2, 3, 96, 128)
    inspection = inspect_captures(planted_captures, layers=[3], images=images, model={"name": "planted", "split": 2})
    written = inspection.save(tmp_path)
    expected = {"layer3_magnitudes": (1000, 450), "layer3_surface": (1000, 700), "layer3_gate": (1000, 780),
                "sweep": (1000, 400)}
    names = {path.name for path in written}
    assert {"report.json", "sweep.safetensors", "layer3_pca.png"} | {f"{n}.png" for n in expected} <= names
    from PIL import Image

    for name, size in expected.items():
        picture = Image.open(tmp_path / f"{name}.png")
        assert picture.size == size
        array = np.asarray(picture.convert("RGB"))
        assert array.std() > 15 and (array.min(axis=-1) < 200).mean() > 0.02  # drawn on, not blank
    pca = np.asarray(Image.open(tmp_path / "layer3_pca.png").convert("RGB"))
    assert pca.shape[1] == 1000 and pca.shape[0] > 300 and pca.std() > 30
    clean = inspect_captures(capture_all(build_tiny_flux(seed=0), batch=1), layers=[3])
    # massive channels are marked in red: many red pixels where they exist, few (the threshold line) where not
    marked = red_pixels(inspection.figures["layer3_magnitudes"])
    assert marked > 3 * red_pixels(clean.figures["layer3_magnitudes"]) + 500


def test_surface_keeps_spikes_of_a_wide_model():
    hidden = torch.randn(900, 3072).abs()
    hidden[:, 1446] = 2000.0
    picture = magnitude_surface_plot(hidden, [1446], title="wide")
    assert picture.size == (1000, 700) and red_pixels(picture) > 10  # the "ch 1446" label is drawn


# --- pipeline layer, cache, report ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_pipeline():
    return DiTFPipeline(plant_massive_activations(build_tiny_flux(seed=0), 1, PLANTED), build_tiny_vae(seed=0))


def test_inspect_pipeline_runs_one_pass_per_micro_batch(demo_pipeline, tmp_path):
    passes = []
    handle = demo_pipeline.transformer.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        cache = SweepCache(directory=tmp_path)
        images = [sample_scene(seed=s, size=(96, 64)) for s in (1, 2)]
        inspection = inspect_pipeline(demo_pipeline, images, ensemble=2, resolution=96, cache=cache, plots=False)
        assert len(passes) == 1  # 2 images x 2 draws, all 6 blocks: one forward pass
        inspect_pipeline(demo_pipeline, images, ensemble=2, resolution=96, cache=cache, plots=False, micro_batch=2)
        assert len(passes) == 3
    finally:
        handle.remove()
    assert inspection.sweep.massive_layers == [2, 3, 4, 5]
    assert inspection.report["settings"]["layers"] == [3] and inspection.report["settings"]["images"] == 2
    assert sorted(massive_channels_for(demo_pipeline.transformer, 3, cache=cache)) == sorted(PLANTED)
    assert massive_channels_for(demo_pipeline.transformer, 1, cache=cache) == []
    assert massive_channels_for(demo_pipeline.transformer, 3, cache=cache, t=0.5) is None  # no sweep at that t
    assert massive_channels_for(build_tiny_flux(seed=0), 3, cache=cache) is None  # same config, other weights
    reloaded = SweepCache(directory=tmp_path)  # a new process: the sweep comes back from its file
    assert sorted(massive_channels_for(demo_pipeline.transformer, 4, cache=reloaded, resolution=96)) == sorted(PLANTED)
    saved = tmp_path / "saved"
    inspection.save(saved)  # an inspector output folder works as a cache folder too
    from_folder = massive_channels_for(demo_pipeline.transformer, 2, cache=SweepCache(directory=saved))
    assert sorted(from_folder) == sorted(PLANTED)


def test_sweep_pipeline_caches_the_full_depth_sweep(demo_pipeline):
    cache = SweepCache()
    sweep = sweep_pipeline(demo_pipeline, sample_scene(size=(64, 64)), ensemble=1, resolution=64, cache=cache)
    assert sweep.layers == tuple(range(DEPTH)) and sweep.massive_layers == [2, 3, 4, 5]
    assert cache.find(model_key(demo_pipeline.transformer), resolution=64, ensemble=1) is sweep
    with pytest.raises(ValueError, match="min_fraction must be in"):
        sweep_captures({0: sweep_captures_input()}, min_fraction="half")


def sweep_captures_input() -> EnsembleCapture:
    zeros = torch.zeros(1, 4)
    return EnsembleCapture(torch.ones(1, 4, 4), Modulation(zeros, zeros, zeros), (2, 2))


def test_model_key_tells_weights_apart():
    clean, planted = build_tiny_flux(seed=0), plant_massive_activations(build_tiny_flux(seed=0), 1, PLANTED)
    assert model_key(clean) == model_key(build_tiny_flux(seed=0))
    assert model_key(clean) != model_key(planted)
    assert model_key(clean).split(":")[1] == model_key(planted).split(":")[1]  # the config hash alone cannot


def test_cache_is_bounded(planted_inspection):
    from ditf_core.inspect import SweepKey

    cache = SweepCache(max_entries=2)
    keys = [SweepKey("m", t, 64, 2, 0, "", 3.5, 100.0) for t in (0.1, 0.2, 0.3)]
    for key in keys:
        cache.put(key, planted_inspection.sweep)
    assert len(cache) == 2 and cache.get(keys[0]) is None and cache.get(keys[2]) is planted_inspection.sweep
    assert cache.find("m", t=0.2) is planted_inspection.sweep and cache.find("m", t=0.1) is None


def test_capture_matches_extract(demo_pipeline):
    image = sample_scene(size=(64, 48))
    run = demo_pipeline.capture(image, layers=[2, 3], ensemble=2, resolution=64)
    features = demo_pipeline.extract(image, ensemble=2, resolution=64, mode="original")
    hidden = run.layers[3].hidden
    assert torch.equal(features.features, hidden.transpose(1, 2).reshape(features.features.shape))
    assert run.pixels.shape == (1, 3, 48, 64) and run.mapping == features.mapping


REPORT_KEYS = {"report_version", "model", "settings", "layers", "sweep", "channels", "channels_text", "figures"}
LAYER_KEYS = {"layer", "block_kind", "grid", "tokens", "hidden_size", "map_median", "massive", "table1", "adaln",
              "gate"}
SWEEP_KEYS = {"layers", "ratio", "min_fraction", "images", "massive_layers", "first_massive_layer", "writer_block",
              "writer_gate", "per_layer"}


def test_report_keys_are_stable_and_json_clean(planted_inspection):
    report = json.loads(json.dumps(planted_inspection.report, allow_nan=False))
    assert set(report) == REPORT_KEYS and report["report_version"] == 1
    assert set(report["layers"][0]) == LAYER_KEYS and set(report["sweep"]) == SWEEP_KEYS
    assert set(report["layers"][0]["gate"]) == {"block", "k", "top_channels", "top_abs_gate", "overlap",
                                                "overlap_fraction", "massive_gate_ranks", "median_abs_gate"}
    assert report["figures"] == [f"{name}.png" for name in planted_inspection.figures]


def test_bad_inputs_name_the_fix(planted_captures):
    with pytest.raises(ValueError, match="non-empty"):
        inspect_captures({})
    with pytest.raises(ValueError, match="were not captured"):
        inspect_captures({3: planted_captures[3]}, layers=[4])
    with pytest.raises(ValueError, match="weak_ratio must be a positive"):
        inspect_captures(planted_captures, weak_ratio=0)
    with pytest.raises(ValueError, match="gate must be"):
        gate_alignment(torch.zeros(1, 2, 3), [0])
    with pytest.raises(ValueError, match="gate_k must be"):
        gate_alignment(torch.zeros(4), [0], k=9)
    with pytest.raises(ValueError, match="images: got 1 image"):
        inspect_captures(planted_captures, layers=[3], images=torch.rand(1, 3, 8, 8), plots=False)


def test_cli_inspect_writes_report_and_pictures(tmp_path, capsys):
    from ditf_core.cli import main

    paths = []
    for name, size in (("a", (96, 64)), ("b", (80, 80))):
        paths.append(tmp_path / f"{name}.png")
        sample_scene(size=size).save(paths[-1])
    out = tmp_path / "out"
    assert main(["inspect", *map(str, paths), "--demo", "--out", str(out), "--ensemble", "1", "--resolution", "96",
                 "--layers", "3,5"]) == 0
    printed = capsys.readouterr()
    assert "note: resizing all images" in printed.err and "massive at blocks [2, 3, 4, 5]" in printed.out
    report = json.loads((out / "report.json").read_text())
    assert [entry["layer"] for entry in report["layers"]] == [3, 5]
    assert sorted(report["channels"]) == sorted(PLANTED) and report["model"]["family"] == "flux"
    for name in report["figures"]:
        assert (out / name).is_file()
    assert main(["inspect", str(tmp_path / "missing.png"), "--demo", "--out", str(out)]) == 2
    assert "no image file at" in capsys.readouterr().err
