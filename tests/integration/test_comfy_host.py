"""The ComfyUI host in-process, on ComfyUI's own model classes: parity with the diffusers host, the user's MODEL
left untouched (also after errors and interrupts), detection, and the nodes' execute paths."""

from __future__ import annotations

import importlib

import pytest
import torch
from ditf_core.demo_model import build_demo_dit, build_tiny_flux, plant_massive_activations

import tiny_models

pytestmark = pytest.mark.comfyui

PLANTED = (13, 41)
PARITY_TOLERANCE = 1e-4  # the bound for fp32; measured values are printed (pytest -s) and reported


@pytest.fixture(scope="module")
def mods(pack):
    names = ("comfy_host", "model", "nodes_load", "nodes_extract")
    found = {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}
    found["core"] = importlib.import_module(f"{pack.__name__}.ditf_core")
    return found


@pytest.fixture(scope="module")
def flux_vaes(comfy):
    return tiny_models.kl_vae_pair("flux")


@pytest.fixture(scope="module")
def sd3_vaes(comfy):
    return tiny_models.kl_vae_pair("sd3")


def hosts(mods, transformer, comfy_model, vaes):
    """(DITF_MODEL on the ComfyUI host, DITF_MODEL on the diffusers host) over the same weights."""
    model = mods["model"]
    diffusers_vae, comfy_vae = vaes
    comfy_side = model.DiTFModel(mods["comfy_host"].ComfyHost.create(comfy_model, comfy_vae))
    pipeline = mods["core"].DiTFPipeline(transformer, diffusers_vae, name="tiny")
    return comfy_side, model.DiTFModel(model.DiffusersHost(pipeline))


def random_conditioning(batch, width, pooled, seed=0, **extra):
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, 6, width, generator=generator), {"pooled_output": torch.randn(batch, pooled, generator=generator), **extra}]]


def pixels(batch=2, height=70, width=90, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def max_diff(a, b) -> float:
    return float((a.features - b.features).abs().max())


def assert_parity(a, b, mode: str, label: str) -> None:
    """DiTF features (modes ditf / adaln, LayerNorm'ed) within 1e-4; the raw block input (mode original) carries
    the massive activations (~1e3 here), so it is compared relative to its size: float32 rounding."""
    diff, size = max_diff(a, b), float(b.features.abs().max())
    print(f"{label} mode {mode}: max |diff| {diff:.2e} (max |feature| {size:.3g})")
    assert diff <= (PARITY_TOLERANCE if mode != "original" else max(PARITY_TOLERANCE, 1e-6 * size))


# --- host parity -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_flux_features_equal_the_diffusers_host(mods, flux_vaes, variant):
    transformer = build_demo_dit(0) if variant == "dev" else plant_massive_activations(build_tiny_flux(0, guidance_embeds=False), 1, PLANTED)
    comfy_side, diffusers_side = hosts(mods, transformer, tiny_models.comfy_flux(transformer), flux_vaes)
    cond = random_conditioning(2, 32, 32, guidance=4.0)
    settings = dict(resolution=64, ensemble=3, seed=7)
    with torch.inference_mode():
        for mode in ("ditf", "adaln", "original"):
            for extra in ({}, {"conditioning": cond}):
                a = comfy_side.extract_layers(pixels(), layers=[2, 3], mode=mode, **settings, **extra)
                b = diffusers_side.extract_layers(pixels(), layers=[2, 3], mode=mode, **settings, **extra)
                for layer in (2, 3):
                    assert_parity(a[layer], b[layer], mode, f"Flux-{variant} layer {layer} {'CONDITIONING' if extra else 'zero'}")
                    assert a[layer].discarded == b[layer].discarded
                    assert set(a[layer].settings) == set(b[layer].settings)
                    if mode == "ditf" and layer == 3:
                        assert sorted(a[layer].discarded) == sorted(PLANTED)


def test_sd35_features_equal_the_diffusers_host(mods, sd3_vaes):
    transformer = plant_massive_activations(tiny_models.tiny_sd35(seed=0), 0, PLANTED)
    comfy_model = tiny_models.comfy_sd3(transformer)
    assert type(comfy_model.model).__name__ == "SD3"
    comfy_side, diffusers_side = hosts(mods, transformer, comfy_model, sd3_vaes)
    settings = dict(resolution=96, ensemble=2, seed=11)
    with torch.inference_mode():
        for extra in ({}, {"conditioning": random_conditioning(1, 32, 32)}):
            for mode in ("ditf", "original"):
                a = comfy_side.extract_layers(pixels(), layers=[0, 1], mode=mode, **settings, **extra)
                b = diffusers_side.extract_layers(pixels(), layers=[0, 1], mode=mode, **settings, **extra)
                for layer in (0, 1):
                    assert_parity(a[layer], b[layer], mode, f"SD3.5 layer {layer} {'CONDITIONING' if extra else 'zero'}")
                    assert a[layer].discarded == b[layer].discarded
                    assert a[layer].settings["massive_channels"] == b[layer].settings["massive_channels"]
                    if mode == "ditf" and layer == 1:  # planted after block 0
                        assert sorted(a[layer].discarded) == sorted(PLANTED)


def test_defaults_match_the_core_families(mods, flux_vaes):
    transformer = build_demo_dit(0)
    comfy_side, diffusers_side = hosts(mods, transformer, tiny_models.comfy_flux(transformer), flux_vaes)
    assert comfy_side.defaults == diffusers_side.defaults
    assert (comfy_side.depth, comfy_side.split) == (6, 2)
    model_keys = set(comfy_side.host.describe())
    assert model_keys == set(diffusers_side.host.describe())


# --- the user's MODEL is never changed ------------------------------------------------------------------------
def sample(model, seed=5):
    import comfy.sample

    latent = torch.zeros(1, 16, 8, 8)
    cond = random_conditioning(1, 32, 32, seed=3)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, 3, 2.0, "euler", "simple", cond, cond, latent, seed=seed)


def snapshot(model):
    return {
        "options": repr(model.model_options),
        "patches": dict(model.patches),
        "object_patches": dict(model.object_patches),
        "weights": {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()},
    }


def assert_same(before, after):
    assert before["options"] == after["options"] and before["patches"] == after["patches"]
    assert before["object_patches"] == after["object_patches"]
    assert all(torch.equal(before["weights"][k], v) for k, v in after["weights"].items())


def test_sampling_is_identical_before_and_after_extraction_errors_and_interrupts(mods, sd3_vaes):
    import comfy.model_management

    comfy_model = tiny_models.comfy_sd3(tiny_models.tiny_sd35(seed=2))
    ditf_model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(comfy_model, sd3_vaes[1]))
    with torch.inference_mode():
        before, state = sample(comfy_model), snapshot(comfy_model)
        ditf_model.extract(pixels(), resolution=64, ensemble=2, seed=0)

        def fail(done, total):
            raise RuntimeError("simulated failure inside extraction")

        with pytest.raises(RuntimeError, match="simulated failure"):
            ditf_model.extract(pixels(), resolution=64, ensemble=3, seed=0, progress=fail)

        def cancel(done, total):
            comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does

        faulty = comfy_model.clone()  # shares the weights; its block 0 raises in the middle of the forward pass
        faulty.set_model_patch_replace(_explode, "dit", "double_block", 0)
        faulty_model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(faulty, sd3_vaes[1]))
        with pytest.raises(RuntimeError, match="simulated fault"):
            faulty_model.extract(pixels(), layer=1, resolution=64, ensemble=2, seed=0)

        with pytest.raises(comfy.model_management.InterruptProcessingException):
            ditf_model.extract(pixels(), resolution=64, ensemble=3, seed=0, progress=cancel)
        assert not comfy.model_management.processing_interrupted()
        after = sample(comfy_model)
    assert torch.equal(before, after)
    assert_same(state, snapshot(comfy_model))
    print(f"before/after sampling: identical ({tuple(after.shape)}, max |diff| {float((before - after).abs().max()):.1e})")


def _explode(args, extra):
    raise RuntimeError("simulated fault inside the forward pass")


# --- detection and input errors ----------------------------------------------------------------------------------
def test_unsupported_models_name_the_supported_families(mods, sd3_vaes):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                   "legacy": False, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
                   "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1], "channel_mult": [1, 2],
                   "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 32,
                   "num_head_channels": 16, "adm_in_channels": None, "use_temporal_attention": False,
                   "use_temporal_resblock": False}
    sd15 = comfy.supported_models.SD15(unet_config).get_model({}, "")
    model = comfy.model_patcher.ModelPatcher(sd15, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    with pytest.raises(mods["core"].UnsupportedModelError, match=r"BaseModel \(UNetModel\).*Flux.*SD3 / SD3.5"):
        mods["comfy_host"].ComfyHost.create(model, sd3_vaes[1])
    with pytest.raises(TypeError, match="ComfyUI MODEL"):
        mods["comfy_host"].ComfyHost.create("flux1-dev.safetensors", sd3_vaes[1])


def test_a_vae_of_another_family_is_rejected(mods):
    import comfy.sd

    import comfy.taesd.taesd as taesd

    flux = tiny_models.comfy_flux(build_demo_dit(0))
    mods["comfy_host"].ComfyHost.create(flux, comfy.sd.VAE(sd=tiny_models.taesd16_state_dict()))  # 16 channels: fine
    sd15_like = {k: torch.zeros(v.shape) for k, v in taesd.TAESD(latent_channels=4).state_dict().items()}
    with pytest.raises(ValueError, match="4-channel latents.*needs 16 channels.*the model's own VAE"):
        mods["comfy_host"].ComfyHost.create(flux, comfy.sd.VAE(sd=sd15_like))


def test_sd3_resolution_beyond_its_position_embeddings_is_rejected(mods, sd3_vaes):
    model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(tiny_models.comfy_sd3(tiny_models.tiny_sd35()), sd3_vaes[1]))
    with pytest.raises(ValueError, match="resolution 1024 gives 64 tokens along one side.*at most 32x32 tokens "
                       r"\(512 px\); the largest resolution for this 90x70 image is 512"), torch.inference_mode():
        model.extract(pixels(), resolution=1024, ensemble=1)


# --- the nodes' execute paths ------------------------------------------------------------------------------------
def test_load_and_extract_nodes_end_to_end(mods, flux_vaes):
    import comfy.utils

    flux = tiny_models.comfy_flux(build_demo_dit(0))
    load, extract = mods["nodes_load"].LoadDiT, mods["nodes_extract"].ExtractFeatures
    image = torch.rand(2, 37, 53, 4)  # odd-sized RGBA batch
    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append((value, total)))
    try:
        with torch.inference_mode():
            ditf_model, summary = load.execute(flux, flux_vaes[1]).result
            assert "2 double + 4 single blocks" in summary
            output = extract.execute(ditf_model, image, layer=-1, t=0.26, ensemble=3, seed=1, resolution=64,
                                     discard="auto", mode="ditf")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert steps == [(1, 3), (2, 3), (3, 3)]  # the progress bar counts the ensemble draws
    features, preview = output.result
    assert isinstance(features, mods["core"].DiTFeatures)
    assert features.features.shape == (2, 64, 3, 4) and sorted(features.discarded) == sorted(PLANTED)
    assert preview.shape == (2, 37, 53, 3)
    assert output.ui is not None and output.ui.as_dict()["images"]  # the node's own preview


@pytest.mark.parametrize("widgets, message", [
    (dict(mode="bogus"), "mode must be one of"),
    (dict(t=float("nan")), "t must be a finite number"),
    (dict(discard="154; x"), "discard must be 'auto', 'none'"),
])
def test_validate_inputs_catches_what_comfyui_does_not(mods, widgets, message):
    extract = mods["nodes_extract"].ExtractFeatures
    assert message in extract.validate_inputs(**widgets)
    assert extract.validate_inputs(t=0.26, discard="1, 2", mode="adaln") is True


def test_full_width_flux_in_the_stock_layout_is_detected_and_runs(mods):
    """Flux.1's real layout (width 3072, 24 heads, T5 width 4096) with 1 double + 1 single block, loaded the way
    UNETLoader loads a file: ComfyUI detects the config from the tensor names and shapes."""
    import comfy.ldm.flux.model
    import comfy.ops
    import comfy.sd

    params = dict(in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
                  num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True,
                  guidance_embed=True)
    shapes = comfy.ldm.flux.model.Flux(device="meta", operations=comfy.ops.disable_weight_init, **params).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator, dtype=torch.bfloat16) * 0.02) for k, v in shapes.items()}
    flux = comfy.sd.load_diffusion_model_state_dict(state, model_options={})
    del state
    vae = comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))
    ditf_model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(flux, vae))
    assert (ditf_model.depth, ditf_model.split, ditf_model.defaults.layer) == (2, 1, 1)
    cond = random_conditioning(1, 4096, 768, guidance=3.5)
    with torch.inference_mode():
        features = ditf_model.extract(pixels(batch=1, height=64, width=64), conditioning=cond, resolution=64, ensemble=1)
    assert features.features.shape == (1, 3072, 4, 4) and torch.isfinite(features.features).all()
    assert features.settings["model"]["hidden_size"] == 3072
