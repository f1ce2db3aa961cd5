"""The ComfyUI host on the families beyond Flux.1 / SD3, on ComfyUI's own model classes: detection and mechanism,
parity with the diffusers host on the same weights converted between formats, and the user's MODEL sampling
bit-identically before and after extraction, errors and interrupts (object-patch families included)."""

from __future__ import annotations

import importlib

import pytest
import torch

import tiny_families

pytestmark = pytest.mark.comfyui

PARITY_TOLERANCE = 1e-4
# family -> (layers on both sides of any stream split, ComfyUI latent channels, video model)
CASES = {
    "qwen_image": ([0, 3], 16, True),
    "wan": ([0, 3], 16, True),
    "hidream": ([1, 2, 4], 16, False),
    "auraflow": ([1, 2, 4], 4, False),
    "pixart": ([0, 1], 4, False),
    "chroma": ([0, 1], 16, False),  # parity at the converter's width: 1 double + 1 single block
    "lumina2": ([0], 16, False),  # parity at the converter's width: 1 joint block
}
# Where the hosts' models themselves differ, the comparison uses sizes on which they agree: HiDream - square latents
# (on others diffusers pads to max_seq tokens as HiDream's own code does, and the zeroed keys still take attention
# weight; ComfyUI does not pad); PixArt - the native size (ComfyUI derives the position embeddings' base size from
# the image size, diffusers from the config: they agree for 33..95 cells on average with the tiny config's 64).
LATENT_SIZES = {"hidream": (16, 16), "pixart": (48, 48)}
RESOLUTIONS = {"pixart": 384}
MECHANISMS = {"qwen_image": "dit_patch", "wan": "dit_patch", "auraflow": "dit_patch", "chroma": "dit_patch",
              "hidream": "object_patch", "pixart": "object_patch", "lumina2": "object_patch"}


@pytest.fixture(scope="module")
def mods(pack):
    names = ("comfy_host", "model")
    found = {name: importlib.import_module(f"{pack.__name__}.nodes.{name}") for name in names}
    found["core"] = importlib.import_module(f"{pack.__name__}.ditf_core")
    found["recipe"] = importlib.import_module(f"{pack.__name__}.ditf_core.recipe")
    return found


@pytest.fixture(scope="module")
def pairs(comfy):
    return {}


def pair(pairs, name):
    """(ComfyUI MODEL, diffusers transformer) of ``name``, built once per module; the full-width pairs of the
    families in ``CONVERTER_WIDTH`` (hundreds of MB) are built fresh for their one test and not kept."""
    if name in tiny_families.CONVERTER_WIDTH:
        return tiny_families.comfy_and_diffusers(name, seed=0)
    if name not in pairs:
        pairs[name] = tiny_families.comfy_and_diffusers(name, seed=0)
    return pairs[name]


@pytest.fixture(scope="module")
def wan_vaes(comfy):
    return tiny_families.wan_vae_pair()


def tiny(pairs, name):
    """(tiny ComfyUI MODEL, diffusers twin of its shapes): the converted pair, except for the families whose pair
    is built at the converter's full width (tiny ComfyUI model with its own weights then)."""
    from ditf_core.demo_model import build_tiny_family

    if name not in tiny_families.CONVERTER_WIDTH:
        return pair(pairs, name)
    key = f"{name} tiny"
    if key not in pairs:
        pairs[key] = tiny_families.comfy_model(name), build_tiny_family(name)
    return pairs[key]


def vae_for(name, wan_vaes):
    return wan_vaes[1] if CASES[name][2] else tiny_families.small_vae(CASES[name][1])


def host_for(mods, model, wan_vaes, name):
    return mods["comfy_host"].ComfyHost.create(model, vae_for(name, wan_vaes))


@pytest.mark.parametrize("name", list(CASES))
def test_each_family_is_detected_with_its_mechanism_and_the_core_structure(mods, pairs, wan_vaes, name):
    model, transformer = tiny(pairs, name)
    host = host_for(mods, model, wan_vaes, name)
    family = mods["core"].family_for(transformer)
    assert host.adapter.mechanism == MECHANISMS[name]
    assert host.family.name == family.name == name
    blocks, core_blocks = host.family.blocks(host.structure), family.blocks(transformer)
    assert len(blocks) == len(core_blocks) and host.family.split(host.structure) == family.split(transformer)
    assert host.defaults == family.defaults(transformer)
    assert host.context_dim == family.text_width(transformer)


@pytest.mark.parametrize("name", ["lumina2", "auraflow"])
def test_massive_activation_patches_refuse_families_without_block_replace_points(mods, pairs, name):
    # Transport / Disruption / Detail Guidance act through patches_replace["dit"] while sampling; an object-patch
    # family's forward never reads it, so a patch would silently do nothing: refused, naming the families that work.
    model, _ = tiny(pairs, name)
    if MECHANISMS[name] == "dit_patch":
        assert mods["comfy_host"].dit_clone(model).adapter.mechanism == "dit_patch"
        return
    with pytest.raises(ValueError, match="no block-replace patch points.*use one of: .*Flux"):
        mods["comfy_host"].dit_clone(model)
    assert not model.model_options.get("transformer_options", {}).get("patches_replace")


@pytest.mark.parametrize("name", list(CASES))
def test_block_inputs_equal_the_diffusers_host_on_converted_weights(mods, pairs, wan_vaes, name):
    """Same latents, noise and text through both hosts: the ensemble-averaged block inputs and their modulation give
    the same DiTF features (<= 1e-4) and raw states (float32 rounding) on both sides of any stream split."""
    model, transformer = pair(pairs, name)
    host = host_for(mods, model, wan_vaes, name)
    family = mods["core"].family_for(transformer)
    layers = CASES[name][0]
    generator = torch.Generator().manual_seed(4)
    channels = family.latent_channels(transformer)
    size = LATENT_SIZES.get(name, (16, 24))
    clean = torch.randn(1, 2, channels, *size, generator=generator)
    noise = torch.randn(2, 2, channels, *size, generator=generator)
    context, extra = tiny_families.conditioning_for(transformer, batch=1)
    streams = {k: v for k, v in extra.items() if k != "pooled_output"}
    pooled = extra.get("pooled_output", torch.zeros(1, 1))
    cond = mods["model"].TextConditioning(context, pooled, 3.5, "test", streams)
    recipe = mods["recipe"]
    with torch.inference_mode():
        comfy_side = host.capture(clean, noise, t=0.3, layers=layers, conditioning=cond)
        text = {"context": context, **streams} if streams else context
        diffusers_side = recipe.capture_ensemble(transformer, clean, t=0.3, layers=layers, text_embeds=text,
                                                 pooled=extra.get("pooled_output"), noise=noise, micro_batch=2)
    for layer in layers:
        a, b = comfy_side[layer], diffusers_side[layer]
        features = [recipe.apply_recipe(x.hidden, x.modulation) for x in (a, b)]
        diff = float((features[0] - features[1]).abs().max())
        raw = float((a.hidden - b.hidden).abs().max()) / max(1.0, float(b.hidden.abs().max()))
        print(f"{name} layer {layer}: features max |diff| {diff:.2e}, raw relative {raw:.2e}")
        assert diff <= PARITY_TOLERANCE and raw <= PARITY_TOLERANCE


def test_wan_images_go_through_comfyuis_video_vae_as_one_frame_each(mods, pairs, wan_vaes):
    """Pixels to features in both hosts with the same Wan VAE weights: ComfyUI's VAE would read a batch as the frames
    of one clip; each image is encoded as its own one-frame clip, as the diffusers host does."""
    comfy_model, transformer = pair(pairs, "wan")
    model = mods["model"]
    comfy_side = model.DiTFModel(mods["comfy_host"].ComfyHost.create(comfy_model, wan_vaes[1]))
    pipeline = mods["core"].DiTFPipeline(transformer, wan_vaes[0], name="tiny wan")
    diffusers_side = model.DiTFModel(model.DiffusersHost(pipeline))
    pixels = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    settings = dict(layers=[2], resolution=64, ensemble=2, seed=3, mode="adaln")
    with torch.inference_mode():
        a = comfy_side.extract_layers(pixels, **settings)[2]
        b = diffusers_side.extract_layers(pixels, **settings)[2]
    diff = float((a.features - b.features).abs().max())
    print(f"wan pixels -> features through both VAEs: max |diff| {diff:.2e}")
    assert a.features.shape == (2, 64, 3, 4) and diff <= PARITY_TOLERANCE


# --- the user's MODEL is never changed ------------------------------------------------------------------------
def sample(model, name, transformer, seed=5):
    import comfy.sample

    channels, video = CASES[name][1], CASES[name][2]
    size = LATENT_SIZES.get(name, (8, 8))
    latent = torch.zeros(1, channels, 1, *size) if video else torch.zeros(1, channels, *size)
    context, extra = tiny_families.conditioning_for(transformer, batch=1, seed=seed)
    extra.setdefault("pooled_output", None)  # as ComfyUI's text encode nodes leave it for T5-only families
    if name == "lumina2":  # Lumina2's text encode gives the caption's mask: NextDiT needs its token count
        extra["attention_mask"] = torch.ones(1, context.shape[1], dtype=torch.long)
    cond = [[context, extra]]
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, 2, 2.0, "euler", "simple", cond, cond, latent, seed=seed)


def snapshot(model):
    diffusion = model.model.diffusion_model
    return {
        "options": repr(model.model_options),
        "object_patches": dict(model.object_patches),
        "modules": {name: id(module) for name, module in diffusion.named_modules()},
        "forwards": [name for name, module in diffusion.named_modules() if "forward" in vars(module)],
        "weights": {k: v.clone() for k, v in diffusion.state_dict().items()},
    }


@pytest.mark.parametrize("name", list(CASES))
def test_sampling_is_identical_before_and_after_extraction_errors_and_interrupts(mods, pairs, wan_vaes, name):
    import comfy.model_management

    comfy_model, transformer = tiny(pairs, name)
    ditf_model = mods["model"].DiTFModel(host_for(mods, comfy_model, wan_vaes, name))
    resolution = RESOLUTIONS.get(name, 64)
    height = resolution if name == "pixart" else 48  # ComfyUI's PixArt needs latents of > 32 cells on average
    pixels = torch.rand(1, 3, height, resolution, generator=torch.Generator().manual_seed(1))
    last = ditf_model.depth - 1
    with torch.inference_mode():
        before, state = sample(comfy_model, name, transformer), snapshot(comfy_model)
        ditf_model.extract(pixels, layer=last, resolution=resolution, ensemble=2, seed=0)

        def fail(done, total):
            raise RuntimeError("simulated failure inside extraction")

        with pytest.raises(RuntimeError, match="simulated failure"):
            ditf_model.extract(pixels, layer=last, resolution=resolution, ensemble=2, seed=0, progress=fail)

        def cancel(done, total):
            comfy.model_management.interrupt_current_processing(True)  # what the Cancel button does

        with pytest.raises(comfy.model_management.InterruptProcessingException):
            ditf_model.extract(pixels, layer=last, resolution=resolution, ensemble=2, seed=0, progress=cancel)
        assert not comfy.model_management.processing_interrupted()
        after_state = snapshot(comfy_model)  # nothing of ours left on the shared model, before ComfyUI reloads it
        after = sample(comfy_model, name, transformer)
    assert torch.equal(before, after), f"{name}: sampling changed after extraction"
    assert state["options"] == after_state["options"] and state["object_patches"] == after_state["object_patches"]
    assert state["modules"] == after_state["modules"] and after_state["forwards"] == []
    assert all(torch.equal(state["weights"][k], v) for k, v in after_state["weights"].items())


@pytest.mark.parametrize("name", ["wan", "hidream", "qwen_image"])
def test_single_file_checkpoints_in_comfyui_layout_load_through_diffusers(mods, pairs, tmp_path, name):
    """A ComfyUI / original-layout .safetensors file plus the model's config folder loads with diffusers'
    from_single_file into exactly the converted twin."""
    from safetensors.torch import save_file

    loading = importlib.import_module(f"{mods['core'].__name__}.loading")
    comfy_model, transformer = pair(pairs, name)
    state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in comfy_model.model.diffusion_model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    transformer.save_config(str(tmp_path / "config"))
    loaded = loading.load_transformer(tmp_path / "model.safetensors", config=tmp_path / "config")
    expected = transformer.state_dict()
    assert type(loaded) is type(transformer) and set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


@pytest.mark.parametrize("name", list(CASES))
def test_the_comfyui_forward_stops_at_block_k(mods, pairs, wan_vaes, name):
    """Blocks before k run once per pass, block k never finishes (its patch stops the pass), later blocks never
    run - with either mechanism."""
    model, transformer = tiny(pairs, name)
    host = host_for(mods, model, wan_vaes, name)
    blocks = host.family.blocks(host.structure)
    layer = len(blocks) // 2
    finished = [0] * len(blocks)
    handles = [block.register_forward_hook(lambda *_, i=i: finished.__setitem__(i, finished[i] + 1))
               for i, block in enumerate(blocks)]
    context, extra = tiny_families.conditioning_for(transformer)
    cond = mods["model"].TextConditioning(context, extra.get("pooled_output", torch.zeros(1, 1)), 3.5, "test",
                                          {k: v for k, v in extra.items() if k != "pooled_output"})
    size = LATENT_SIZES.get(name, (16, 16))
    channels = host.family.latent_channels(transformer)
    try:
        with torch.inference_mode():  # 2 draws of one image: 2 passes
            host.capture(torch.zeros(1, 1, channels, *size), torch.randn(2, 1, channels, *size), t=0.3,
                         layers=[layer], conditioning=cond)
    finally:
        for handle in handles:
            handle.remove()
    assert finished == [2] * layer + [0] * (len(blocks) - layer), name
