"""Every family beyond Flux.1 / SD3 on its tiny config: the recipe equals the by-hand reference on both sides of
any stream split, early exit stops, hooks never stay, and the modulation read is what the block feeds attention."""

from __future__ import annotations

import pytest
import torch
from helpers import family_conditioning, family_latents
from reference_recipe import reference_features

from ditf_core import DiTFPipeline, extract_from_latents, family_for
from ditf_core.demo_model import TINY_FAMILIES, build_tiny_family, build_tiny_vae

TOLERANCE = 1e-5
# (family, layers to check: first, both sides of the split, last), the tiny VAE of its latent space.
CASES = {
    "flux2": ([0, 1, 2, 4], "flux2"),
    "chroma": ([0, 1, 2, 4], "kl16"),
    "qwen_image": ([0, 2, 3], "qwen"),
    "lumina2": ([0, 2, 3], "kl16"),
    "z_image": ([0, 2, 3], "kl16"),
    "hidream": ([0, 1, 2, 4], "kl16"),
    "pixart": ([0, 2, 3], "kl4"),
    "auraflow": ([0, 1, 2, 4], "kl4"),
    "wan": ([0, 2, 3], "wan"),
}
NAMES = list(CASES)


@pytest.fixture(scope="module", params=NAMES)
def tiny(request):
    return request.param, build_tiny_family(request.param, seed=0)


def latents_for(model, **kwargs):
    size = (8, 12) if family_for(model).patch == 1 else (16, 24)  # a 8 x 12 token grid either way
    return family_latents(model, size=size, **kwargs)


def test_every_family_has_a_tiny_config_and_an_adapter():
    assert set(NAMES) == set(TINY_FAMILIES)
    assert len({family_for(build_tiny_family(name)).name for name in NAMES} | {"flux", "sd3"}) == 11


def test_recipe_equals_the_by_hand_reference_on_both_sides_of_the_split(tiny):
    name, model = tiny
    latents, noise = latents_for(model)
    text, pooled = family_conditioning(model)
    for layer in CASES[name][0]:
        ours = extract_from_latents(model, latents, t=0.3, layer=layer, text_embeds=text, pooled=pooled, noise=noise,
                                    discard=(5, 40))
        with torch.no_grad():
            reference = reference_features(model, latents, noise, t=0.3, layer=layer, text=text, pooled=pooled,
                                           discard=(5, 40))
        assert ours.shape == (2, family_for(model).hidden_size(model), 8, 12), name
        diff = float((ours - reference).abs().max())
        assert diff <= TOLERANCE, f"{name} layer {layer}: max |diff| {diff:.2e}"


def test_raw_block_input_equals_the_reference(tiny):
    name, model = tiny
    latents, noise = latents_for(model, batch=1)
    text, pooled = family_conditioning(model)
    layer = CASES[name][0][-1]
    ours = extract_from_latents(model, latents, t=0.7, layer=layer, text_embeds=text, pooled=pooled, noise=noise,
                                modulate=False)
    with torch.no_grad():
        reference = reference_features(model, latents, noise, t=0.7, layer=layer, text=text, pooled=pooled,
                                       modulate=False)
    assert (ours - reference).abs().max() <= TOLERANCE * max(1.0, float(reference.abs().max()))


def test_early_exit_stops_at_the_block(tiny):
    name, model = tiny
    family = family_for(model)
    blocks = family.blocks(model)
    counts = [0] * len(blocks)
    handles = [b.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, b in enumerate(blocks)]
    latents, noise = latents_for(model, ensemble=3)
    text, pooled = family_conditioning(model)
    layer = CASES[name][0][-2]
    try:  # 3 draws x 2 images, 3 rows per pass -> 2 passes
        extract_from_latents(model, latents, t=0.3, layer=layer, text_embeds=text, pooled=pooled, noise=noise,
                             micro_batch=3)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == [2] * (layer + 1) + [0] * (len(blocks) - layer - 1), name


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_no_hook_left_after_success_error_or_interrupt(tiny, exception):
    name, model = tiny
    latents, noise = latents_for(model, ensemble=2)
    text, pooled = family_conditioning(model)
    layer = CASES[name][0][-1]
    extract_from_latents(model, latents, t=0.3, layer=layer, text_embeds=text, pooled=pooled, noise=noise)
    assert _hooks(model) == 0

    def fail(done, total):
        raise exception("stop")

    with pytest.raises(exception):
        extract_from_latents(model, latents, t=0.3, layer=layer, text_embeds=text, pooled=pooled, noise=noise,
                             micro_batch=2, progress=fail)
    assert _hooks(model) == 0


def test_modulation_read_is_what_the_block_feeds_its_attention(tiny):
    """Capture block k's input and modulation through the adapter, and record what block k itself hands its
    attention: the block's own norm of the image tokens, modulated by what we read, must equal it."""
    from attention_inputs import ATTENTION_INPUTS
    from attention_inputs import fed as fed_input

    name, model = tiny
    family = family_for(model)
    latents, _ = latents_for(model, batch=1)
    text, pooled = family_conditioning(model)
    count = 8 * 12
    for layer in CASES[name][0]:
        block = family.blocks(model)[layer]
        attention, own_norm = ATTENTION_INPUTS[name](block)
        seen = {}

        def take_block(module, args, kwargs):
            hidden, vector = family.block_inputs(args, kwargs)
            seen["hidden"] = family.image_tokens(model, layer, hidden, count).clone()
            seen["vector"] = vector.clone()

        def take_attention(module, args, kwargs):
            fed = fed_input(args, kwargs)
            seen["fed"] = family.image_tokens(model, layer, fed, count).clone()

        handles = [block.register_forward_pre_hook(take_block, with_kwargs=True),
                   attention.register_forward_pre_hook(take_attention, with_kwargs=True)]
        try:
            with torch.no_grad():
                family.forward(model, latents, 0.4, text, pooled if pooled is not None else torch.zeros(1, 1), 3.5)
        finally:
            for handle in handles:
                handle.remove()
        mod = family.modulation(block, seen["vector"], family.hidden_size(model))
        with torch.no_grad():
            expected = own_norm(seen["hidden"]) * (1 + mod.scale[:, None]) + mod.shift[:, None]
        diff = float((expected - seen["fed"]).abs().max())
        assert diff <= TOLERANCE, f"{name} block {layer}: modulated input differs by {diff:.2e}"


def test_images_to_features_through_each_familys_vae(tiny):
    from ditf_core.samples import sample_scene

    name, model = tiny
    pipeline = DiTFPipeline(model, build_tiny_vae(kind=CASES[name][1]), name=name)
    features = pipeline.extract(sample_scene(size=(150, 100)), resolution=128, ensemble=2)
    assert features.features.shape == (1, family_for(model).hidden_size(model), 5, 8)
    assert torch.isfinite(features.features).all()
    assert features.settings["family"] == name and features.settings["layer"] == pipeline.defaults.layer


@pytest.mark.parametrize("name, wrong", [("wan", "kl16"), ("flux2", "kl16"), ("pixart", "kl16"), ("chroma", "kl4")])
def test_a_vae_of_another_latent_space_is_explained(name, wrong):
    with pytest.raises(ValueError, match="latents at 1/.*use the model's own VAE"):
        DiTFPipeline(build_tiny_family(name), build_tiny_vae(kind=wrong))


def test_defaults_follow_the_relative_depth_rule_where_nothing_is_published():
    from ditf_core.families.base import relative_depth_layer

    for name in NAMES:
        model = build_tiny_family(name)
        family = family_for(model)
        defaults = family.defaults(model)
        assert defaults.layer == relative_depth_layer(len(family.blocks(model))) and defaults.t == 0.26
        assert "python -m ditf_core tune" in defaults.source
    assert relative_depth_layer(57) == 28 and relative_depth_layer(60) == 29 and relative_depth_layer(30) == 15


def test_inspector_matching_and_warping_work_unchanged_on_every_family(tiny):
    """What consumes DITF_FEATURES or captures (inspector with its full-depth sweep, dense and sparse matching,
    warping from the matches) runs on every family's features as it does on Flux's."""
    from ditf_core.inspect import SweepCache, inspect_pipeline
    from ditf_core.matching import match_dense, match_points
    from ditf_core.samples import sample_pair
    from ditf_core.warping import warp_to_target

    name, model = tiny
    pipeline = DiTFPipeline(model, build_tiny_vae(kind=CASES[name][1]), name=name)
    source, target = (image.resize((128, 96)) for image in sample_pair()[:2])
    inspection = inspect_pipeline(pipeline, [source], cache=SweepCache(), plots=False, resolution=64, ensemble=1)
    assert inspection.report["sweep"]["layers"] == list(range(pipeline.depth))
    a, b = (pipeline.extract(image, resolution=64, ensemble=1) for image in (source, target))
    points = match_points(a, b, [[20.0, 30.0], [90.0, 60.0]])
    assert points.points.shape == (1, 2, 2) and torch.isfinite(points.points).all()
    dense = match_dense(a, b)
    warped = warp_to_target(torch.rand(1, 3, 96, 128), dense)
    assert warped.shape == (1, 3, 96, 128)
