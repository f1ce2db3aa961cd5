"""Massive-Activation Transport / Disruption / Detail Guidance / Mask executed in-process on ComfyUI's own model
classes and samplers (tiny planted Flux, Flux without guidance embedding, SD3.5): identities bit for bit, the effects
on the planted model, the user's MODEL left untouched (also after errors and Cancel), stacking with other patches and
SkipLayerGuidanceDiT, samplers x CFG, batches, and bad input named."""

from __future__ import annotations

import importlib

import pytest
import torch
from ditf_core.demo_model import DEMO_MASSIVE_CHANNELS, build_demo_dit, build_tiny_flux, plant_massive_activations

import tiny_models

pytestmark = pytest.mark.comfyui

K = len(DEMO_MASSIVE_CHANNELS)
TRANSPORT = dict(blocks="all", start_percent=0.0, end_percent=1.0, top_k=K, mask="none", strength=1.0, seed=0)
DG = dict(layer=3, weight=1.0, channels="auto", start_percent=0.0, end_percent=1.0)
DISRUPT = dict(blocks="all", start_percent=0.0, end_percent=1.0, top_k=K, control=False)


@pytest.fixture(scope="module")
def mods(pack):
    names = ("nodes_ma_patch", "nodes_ma_mask", "comfy_host", "ma_runtime", "model")
    return {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}


@pytest.fixture(scope="module")
def flux(comfy):
    return tiny_models.comfy_flux(build_demo_dit(0))


@pytest.fixture(scope="module")
def models(comfy, flux):
    """Flux-dev layout (planted), Flux without guidance embedding (schnell's layout), SD3.5 (planted)."""
    schnell = plant_massive_activations(build_tiny_flux(0, guidance_embeds=False), 1, DEMO_MASSIVE_CHANNELS)
    sd35 = plant_massive_activations(tiny_models.tiny_sd35(seed=0), 0, DEMO_MASSIVE_CHANNELS)
    return {"flux": flux, "schnell": tiny_models.comfy_flux(schnell), "sd35": tiny_models.comfy_sd3(sd35)}


def cond(seed: int, batch: int = 1, guidance: float = 3.5):
    """Random CONDITIONING. The prompts share one pooled vector: in a random tiny model it modulates every block so
    strongly that a different one, not the massive activations, would carry the difference between prompts."""
    context = torch.randn(batch, 6, 32, generator=torch.Generator().manual_seed(seed))
    pooled = torch.randn(batch, 32, generator=torch.Generator().manual_seed(99))
    return [[context, {"pooled_output": pooled, "guidance": guidance}]]


def sample(model, *, sampler="euler", cfg=1.0, steps=3, seed=5, positive=None, negative=None, batch=1, callback=None):
    import comfy.sample

    latent = torch.zeros(batch, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", positive or cond(3),
                                   negative or cond(4), latent, seed=seed, callback=callback, disable_pbar=True)


def transported(mods, model, **settings):
    return mods["nodes_ma_patch"].MassiveActivationTransport.execute(model, **{**TRANSPORT, **settings}).result[0]


def disrupted(mods, model, **settings):
    return mods["nodes_ma_patch"].MassiveActivationDisruption.execute(model, **{**DISRUPT, **settings}).result[0]


def guided(mods, model, **settings):
    return mods["nodes_ma_patch"].DetailGuidance.execute(model, **{**DG, **settings}).result[0]


def gap(a, b) -> float:
    return float((a - b).norm())


# --- identities ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["flux", "sd35"])
def test_identities_are_bit_identical_to_the_plain_model(mods, models, name):
    model = models[name]
    for cfg in (1.0, 2.0):
        plain = sample(model, cfg=cfg)
        same_prompt = transported(mods, model, source_conditioning=cond(3), top_k=16, mask="source")
        clones = {
            "strength 0": transported(mods, model, source_conditioning=cond(7), strength=0.0),
            "no blocks": transported(mods, model, source_conditioning=cond(7), blocks=""),
            "source == target (euler)": same_prompt,
            "Detail Guidance w = 0": guided(mods, model, weight=0.0, layer=1),
            "disruption of no blocks": disrupted(mods, model, blocks=""),
        }
        for label, clone in clones.items():
            assert torch.equal(sample(clone, cfg=cfg), plain), f"{name} cfg {cfg}: {label}"
        assert not torch.equal(sample(transported(mods, model, source_conditioning=cond(7), strength=0.01), cfg=cfg),
                               plain)


def probe_patch(records: list):
    """A replace patch recording the image tokens a double/joint block receives (args["img"]), per model call."""

    def patch(args, extra):
        options = args["transformer_options"]
        records.append((type(options.get("ditf_ma_transport_pass")).__name__, list(options["cond_or_uncond"]),
                        args["img"].clone()))
        return extra["original_block"](args)

    return patch


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_full_transport_gives_the_conditional_rows_the_sources_own_tokens(mods, flux, cfg):
    """Full mask, all channels, strength 1: the transported blocks receive the source's own image tokens (the tokens
    of the source sampled on its own), in the conditional rows; the unconditional rows are left as they were."""
    records = {"plain": [], "source": [], "transport": []}
    for label, positive in (("plain", cond(3)), ("source", cond(7))):
        probed = flux.clone()
        probed.set_model_patch_replace(probe_patch(records[label]), "dit", "double_block", 1)
        sample(probed, cfg=cfg, steps=1, positive=positive)
    probed = flux.clone()
    probed.set_model_patch_replace(probe_patch(records["transport"]), "dit", "double_block", 1)
    sample(transported(mods, probed, source_conditioning=cond(7), top_k=64, blocks="0-3"), cfg=cfg, steps=1,
           positive=cond(3))
    (_, kinds, plain), (_, _, source_alone) = records["plain"][0], records["source"][0]
    (source_pass, source_kinds, source_tokens), (target_pass, target_kinds, target_tokens) = records["transport"][:2]
    assert (source_pass, target_pass) == ("SourcePass", "TargetPass") and source_kinds == target_kinds == kinds
    conditional = torch.cat([torch.arange(i, i + 1) for i, kind in enumerate(kinds) if kind == 0])
    assert torch.equal(source_tokens, source_alone)  # the source pass mirrors the source's own call
    assert torch.equal(target_tokens[conditional], source_alone[conditional])
    unconditional = [i for i, kind in enumerate(kinds) if kind == 1]
    assert torch.equal(target_tokens[unconditional], plain[unconditional])
    assert len(unconditional) == (1 if cfg > 1 else 0)


# --- effects on the planted model -------------------------------------------------------------------------------------
def test_disrupting_the_planted_channels_changes_the_sample_far_more_than_the_control(mods, flux):
    plain = sample(flux)
    massive, control = gap(sample(disrupted(mods, flux)), plain), gap(sample(disrupted(mods, flux, control=True)), plain)
    print(f"ComfyUI host: disruption changes the sample by {massive:.4g}, the control by {control:.4g} "
          f"(ratio {massive / control:.0f}x)")
    assert massive > 100 * control


def test_transport_moves_the_sample_to_the_source_monotonically(mods, flux):
    source = sample(flux, positive=cond(7))
    gaps = [gap(sample(transported(mods, flux, source_conditioning=cond(7), strength=s)), source)
            for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    print("ComfyUI host: distance to the source sample by strength 0..1:", [round(g, 5) for g in gaps])
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 0.05 * gaps[0]


def test_detail_guidance_and_the_window(mods, flux):
    plain = sample(flux, steps=4)
    assert gap(sample(guided(mods, flux), steps=4), plain) > 0
    outside = guided(mods, flux, start_percent=0.99, end_percent=1.0)  # no sampled sigma lies in it
    assert torch.equal(sample(outside, steps=4), plain)
    listed = guided(mods, flux, channels=", ".join(map(str, DEMO_MASSIVE_CHANNELS)))
    assert torch.equal(sample(listed, steps=4), sample(guided(mods, flux), steps=4))  # auto finds the planted pair


# --- the user's MODEL is never changed -----------------------------------------------------------------------------------
def snapshot(model):
    return (repr(model.model_options), dict(model.patches), dict(model.object_patches), repr(model.wrappers),
            {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()})


def test_the_users_model_samples_identically_after_every_patch_error_and_cancel(mods, flux):
    import comfy.model_management

    from test_comfy_host import _explode

    before, state = sample(flux, cfg=2.0), snapshot(flux)
    clones = [transported(mods, flux, source_conditioning=cond(7), mask="source"), disrupted(mods, flux),
              guided(mods, flux)]
    for clone in clones:
        assert not torch.equal(sample(clone, cfg=2.0), before)
    wrong_mask = transported(mods, flux, source_conditioning=cond(7), mask="mask", spatial_mask=torch.ones(1, 64, 32))
    with pytest.raises(ValueError, match="spatial_mask is 32x64 px but .* 4x4 token grid"):
        sample(wrong_mask)
    faulty = flux.clone()
    faulty.set_model_patch_replace(_explode, "dit", "single_block", 2)
    with pytest.raises(RuntimeError, match="simulated fault"):
        sample(transported(mods, faulty, source_conditioning=cond(7)))

    def cancel(step, x0, x, total):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does
            mods["comfy_host"].check_interrupted()  # where the server's progress hook looks

    for clone in clones:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            sample(clone, cfg=2.0, callback=cancel)
        assert not comfy.model_management.processing_interrupted()
    after = sample(flux, cfg=2.0)
    assert torch.equal(before, after) and all(a == b for a, b in zip(state[:4], snapshot(flux)[:4]))
    assert all(torch.equal(v, snapshot(flux)[4][k]) for k, v in state[4].items())


# --- stacking with other patches --------------------------------------------------------------------------------------
def skip_layer_guidance(model, **settings):
    import comfy_extras.nodes_slg

    settings = {"scale": 3.0, "start_percent": 0.0, "end_percent": 1.0, "double_layers": "1", "single_layers": "1",
                **settings}
    return comfy_extras.nodes_slg.SkipLayerGuidanceDiT.execute(model, **settings).result[0]


def test_detail_guidance_and_skip_layer_guidance_add_up_in_either_order(mods, flux):
    """One euler step from sigma 1 to 0 returns the step's denoised prediction: each guidance adds its own term."""
    plain = sample(flux, steps=1)
    dg, slg = sample(guided(mods, flux), steps=1) - plain, sample(skip_layer_guidance(flux), steps=1) - plain
    for both in (skip_layer_guidance(guided(mods, flux)), guided(mods, skip_layer_guidance(flux))):
        assert torch.allclose(sample(both, steps=1) - plain, dg + slg, rtol=1e-4, atol=1e-4 * float(dg.abs().max()))


def test_transport_and_disruption_stack_with_skip_layer_guidance(mods, flux):
    plain, slg = sample(flux), sample(skip_layer_guidance(flux))
    for patch in (lambda m: transported(mods, m, source_conditioning=cond(7)), lambda m: disrupted(mods, m)):
        alone = sample(patch(flux))
        first, second = sample(skip_layer_guidance(patch(flux))), sample(patch(skip_layer_guidance(flux)))
        assert torch.equal(first, second)  # the order of the two nodes does not matter
        assert not torch.equal(first, alone) and not torch.equal(first, slg) and not torch.equal(alone, plain)


def test_a_replace_patch_already_on_the_block_keeps_running(mods, flux):
    from ditf_core.transport import Disruption

    plain_records, records = [], []
    for store in (plain_records, records):
        probed = flux.clone()
        probed.set_model_patch_replace(probe_patch(store), "dit", "double_block", 1)
        if store is records:
            patched = disrupted(mods, probed, blocks="1")
            result = sample(patched, steps=2)
        else:
            sample(probed, steps=2)
    assert len(records) == 2  # the probe still ran, once per step, after our patch, on the disrupted tokens
    assert torch.equal(records[0][2], Disruption(K).apply(plain_records[0][2]))
    assert torch.equal(result, sample(disrupted(mods, flux, blocks="1"), steps=2))  # the probe passes through
    key = ("double_block", 1)
    assert probed.model_options["transformer_options"]["patches_replace"]["dit"][key] is not \
        patched.model_options["transformer_options"]["patches_replace"]["dit"][key]


# --- samplers, CFG, batches, families ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_every_patch_works_with_samplers_and_cfg(mods, models, sampler):
    for name, model in models.items():
        clones = {"transport": transported(mods, model, source_conditioning=cond(7), mask="union"),
                  "disruption": disrupted(mods, model), "detail guidance": guided(mods, model, layer=-1)}
        for cfg in (1.0, 2.0):
            plain = sample(model, sampler=sampler, cfg=cfg, steps=2)
            for label, clone in clones.items():
                out = sample(clone, sampler=sampler, cfg=cfg, steps=2)
                assert torch.isfinite(out).all() and not torch.equal(out, plain), (name, label, cfg)


def test_batches_transport_each_image_from_its_own_source(mods, flux):
    import comfy.sample

    clone = transported(mods, flux, source_conditioning=cond(7))
    prompts = [cond(3), cond(8)]
    positive = [[torch.cat([p[0][0] for p in prompts]), {"pooled_output": torch.cat([p[0][1]["pooled_output"]
                                                                                     for p in prompts]), "guidance": 3.5}]]
    both = sample(clone, batch=2, cfg=2.0, positive=positive)
    noise = comfy.sample.prepare_noise(torch.zeros(2, 16, 8, 8), 5)
    for row in range(2):  # each image, sampled alone from its own noise and prompt, comes out the same
        with torch.inference_mode():
            alone = comfy.sample.sample(clone, noise[row : row + 1], 3, 2.0, "euler", "simple", prompts[row], cond(4),
                                        torch.zeros(1, 16, 8, 8), seed=5, disable_pbar=True)
        assert torch.allclose(both[row : row + 1], alone, atol=1e-4)
    assert not torch.allclose(both[0], both[1], atol=1e-2)


def test_image_source_transport(mods, flux):
    import comfy.sd

    vae = comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))
    reference = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(2))  # other size, same aspect
    plain = sample(flux, cfg=2.0)
    for settings in (dict(), dict(source_conditioning=cond(7)), dict(mask="target")):
        clone = transported(mods, flux, source_image=reference, vae=vae, **settings)
        out = sample(clone, cfg=2.0)
        assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert torch.equal(sample(transported(mods, flux, source_image=reference, vae=vae, strength=0.0), cfg=2.0), plain)
    with pytest.raises(ValueError, match="another aspect ratio"):
        sample(transported(mods, flux, source_image=torch.rand(1, 64, 128, 3), vae=vae))


# --- bad input ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node, settings, message", [
    ("transport", dict(blocks="0, 99", source_conditioning=cond(7)), "blocks: this model has no block 99; use 0..5"),
    ("transport", dict(top_k=65, source_conditioning=cond(7)), "top_k must be in 1..64"),
    ("transport", dict(strength=float("nan"), source_conditioning=cond(7)), "strength must be a finite number"),
    ("transport", dict(), "connect a source: source_conditioning"),
    ("transport", dict(source_image=torch.rand(1, 32, 32, 3)), "source_image needs the model's VAE"),
    ("transport", dict(mask="mask", source_conditioning=cond(7)), "nothing is connected to spatial_mask"),
    ("transport", dict(spatial_mask=torch.ones(1, 8, 8), source_conditioning=cond(7)), "set mask to 'mask'"),
    ("transport", dict(source_conditioning=[[torch.zeros(1, 6, 48), {"pooled_output": torch.zeros(1, 32)}]]),
     "source_conditioning: the CONDITIONING text embeddings are \\[1, 6, 48\\]"),
    ("transport", dict(mask="everywhere", source_conditioning=cond(7)), "mask must be one of"),
    ("disruption", dict(blocks="7"), "blocks: this model has no block 7"),
    ("disruption", dict(top_k=0), "top_k must be in 1..64"),
    ("guidance", dict(layer=6), "layer 6 is out of range"),
    ("guidance", dict(weight=float("nan")), "weight must be a finite number"),
    ("guidance", dict(channels="13, x"), "channels must be 'auto' or channel numbers"),
    ("guidance", dict(channels="13, 64"), "channels: this model has channels 0..63"),
    ("guidance", dict(start_percent=0.8, end_percent=0.2), "start_percent \\(0.8\\) must not be after end_percent"),
])
def test_bad_input_is_named(mods, flux, node, settings, message):
    run = {"transport": transported, "disruption": disrupted, "guidance": guided}[node]
    with pytest.raises((TypeError, ValueError), match=message):
        run(mods, flux, **settings)


def test_one_transport_per_model_and_models_that_are_not_dits(mods, flux):
    once = transported(mods, flux, source_conditioning=cond(7))
    with pytest.raises(ValueError, match="already carries a Massive-Activation Transport"):
        transported(mods, once, source_conditioning=cond(8))
    with pytest.raises(TypeError, match="model must be a ComfyUI MODEL"):
        disrupted(mods, "flux1-dev.safetensors")


def test_validate_inputs_catch_what_comfyui_does_not(mods):
    nodes = mods["nodes_ma_patch"]
    assert "strength must be a finite" in nodes.MassiveActivationTransport.validate_inputs(strength=float("nan"))
    assert "mask must be one of" in nodes.MassiveActivationTransport.validate_inputs(mask="all")
    assert "cannot read 'x'" in nodes.MassiveActivationDisruption.validate_inputs(blocks="1, x")
    assert "weight must be a finite" in nodes.DetailGuidance.validate_inputs(weight=float("inf"))
    assert nodes.DetailGuidance.validate_inputs(weight=2.0, channels="154, 1446", start_percent=0.1, end_percent=0.9)


# --- Massive-Activation Mask -------------------------------------------------------------------------------------------
def test_mask_node_outputs_the_kmeans_mask_of_the_captured_block(mods, flux):
    import comfy.sd

    from ditf_core.transport import ma_mask

    vae = comfy.sd.VAE(sd=tiny_models.taesd16_state_dict("flux"))
    ditf_model = mods["model"].DiTFModel(mods["comfy_host"].ComfyHost.create(flux, vae))
    image = torch.rand(2, 40, 72, 3, generator=torch.Generator().manual_seed(4))
    settings = dict(layer=3, top_k=4, t=0.26, ensemble=2, seed=1, resolution=64)
    with torch.inference_mode():
        output = mods["nodes_ma_mask"].MassiveActivationMask.execute(ditf_model, image, **settings)
        run = ditf_model.capture(mods["nodes_ma_patch"].image_batch(image), layers=[3], t=0.26, ensemble=2,
                                 resolution=64, seed=1)
    mask, preview = output.result
    assert mask.shape == (2, 40, 72) and preview.shape == (2, 40, 72, 3)
    captured = run.layers[3]
    expected = ma_mask(captured.hidden, top_k=4).reshape(2, 1, *captured.grid)
    resized = torch.nn.functional.interpolate(expected, size=(40, 72), mode="nearest")[:, 0]
    assert torch.equal(mask, resized) and output.ui is not None
    with pytest.raises(ValueError, match="top_k must be in 1..64"):
        mods["nodes_ma_mask"].MassiveActivationMask.execute(ditf_model, image, **{**settings, "top_k": 100})
