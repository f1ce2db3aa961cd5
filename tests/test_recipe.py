"""extract_from_latents against the by-hand reference, early exit, hook hygiene and input errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import conditioning, latents_and_noise
from reference_recipe import reference_features

from ditf_core import UnsupportedModelError, extract_from_latents
from ditf_core.families.flux import pack_latents

TOLERANCE = 1e-5


def _both(model, layer, discard=(), modulate=True, ensemble=3, batch=2, **kwargs):
    latents, noise = latents_and_noise(batch=batch, ensemble=ensemble)
    text, pooled = conditioning(model, batch=1)
    ours = extract_from_latents(model, latents, t=0.26, layer=layer, text_embeds=text, pooled=pooled, noise=noise,
                                discard=discard, modulate=modulate, **kwargs)
    with torch.no_grad():
        reference = reference_features(model, latents, noise, t=0.26, layer=layer, text=text, pooled=pooled,
                                       discard=discard, modulate=modulate)
    return ours, reference


# Flux tiny: blocks 0-1 double, 2-5 single; layers on both sides of the split.
@pytest.mark.parametrize("layer", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("discard", [(), (3, 60)])
def test_flux_matches_reference(tiny_flux, layer, discard):
    ours, reference = _both(tiny_flux, layer, discard)
    assert ours.shape == (2, 64, 8, 12)
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max() <= TOLERANCE


@pytest.mark.parametrize("layer", [0, 1, 3])
@pytest.mark.parametrize("fixture", ["tiny_sd3", "tiny_sd35"])
def test_sd3_matches_reference(request, fixture, layer):
    model = request.getfixturevalue(fixture)
    ours, reference = _both(model, layer, discard=(7,))
    assert ours.shape == (2, 64, 8, 12)
    assert (ours - reference).abs().max() <= TOLERANCE


def test_schnell_style_flux_without_guidance_matches_reference():
    from ditf_core.demo_model import build_tiny_flux

    ours, reference = _both(build_tiny_flux(seed=3, guidance_embeds=False), layer=4)
    assert (ours - reference).abs().max() <= TOLERANCE


def test_raw_mode_matches_reference_and_differs_from_modulated(planted_flux):
    raw, reference = _both(planted_flux, layer=3, modulate=False)
    assert (raw - reference).abs().max() <= TOLERANCE * raw.abs().max()
    modulated, _ = _both(planted_flux, layer=3)
    assert not torch.allclose(raw, modulated)


def test_without_noise_latents_are_used_as_given(tiny_flux):
    latents, _ = latents_and_noise(batch=1)
    text, pooled = conditioning(tiny_flux)
    ours = extract_from_latents(tiny_flux, latents, t=0.5, layer=3, text_embeds=text, pooled=pooled)
    with torch.no_grad():
        reference = reference_features(tiny_flux, latents, None, t=0.5, layer=3, text=text, pooled=pooled)
    assert (ours - reference).abs().max() <= TOLERANCE


def test_per_member_clean_latents_are_supported(tiny_flux):
    """[E, B, ...] latents: one posterior sample per ensemble member (the pipeline's case)."""
    _, noise = latents_and_noise(batch=2, ensemble=3)
    clean = torch.randn(3, 2, 16, 16, 24)
    text, pooled = conditioning(tiny_flux)
    ours = extract_from_latents(tiny_flux, clean, t=0.26, layer=2, text_embeds=text, pooled=pooled, noise=noise)
    with torch.no_grad():
        reference = reference_features(tiny_flux, clean, noise, t=0.26, layer=2, text=text, pooled=pooled)
    assert (ours - reference).abs().max() <= TOLERANCE


def test_micro_batches_give_the_same_features(tiny_flux):
    whole, _ = _both(tiny_flux, layer=3)
    for micro_batch in (1, 4):
        chunked, _ = _both(tiny_flux, layer=3, micro_batch=micro_batch)
        assert (whole - chunked).abs().max() <= TOLERANCE


def test_progress_reports_every_pass(tiny_flux):
    calls = []
    _both(tiny_flux, layer=3, micro_batch=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]  # 3 draws x 2 images = 6 rows, 4 per pass


def test_forward_stops_at_block_k(tiny_flux):
    from ditf_core.families import family_for

    blocks = family_for(tiny_flux).blocks(tiny_flux)
    counts = [0] * len(blocks)
    handles = [b.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1)) for i, b in enumerate(blocks)]
    latents, noise = latents_and_noise(batch=2, ensemble=3)
    text, pooled = conditioning(tiny_flux)
    try:  # 3 draws x 2 images = 6 rows, 3 per pass -> 2 passes
        extract_from_latents(tiny_flux, latents, t=0.26, layer=3, text_embeds=text, pooled=pooled, noise=noise,
                             micro_batch=3)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == [2, 2, 2, 0, 0, 0]
    assert tiny_flux.norm_out is not None  # model intact


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_no_hook_left_after_error_or_interrupt(tiny_flux, exception):
    def fail(done, total):
        raise exception("stop")

    assert _hooks(tiny_flux) == 0
    with pytest.raises(exception):
        _both(tiny_flux, layer=3, micro_batch=2, progress=fail)
    assert _hooks(tiny_flux) == 0


def test_no_hook_left_after_error_inside_forward(tiny_flux):
    latents, noise = latents_and_noise(batch=1, ensemble=1)
    text, pooled = conditioning(tiny_flux)
    original = tiny_flux.transformer_blocks[1].forward
    tiny_flux.transformer_blocks[1].forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            extract_from_latents(tiny_flux, latents, t=0.3, layer=4, text_embeds=text, pooled=pooled, noise=noise)
    finally:
        tiny_flux.transformer_blocks[1].forward = original
    assert _hooks(tiny_flux) == 0
    # and the model still works afterwards
    extract_from_latents(tiny_flux, latents, t=0.3, layer=4, text_embeds=text, pooled=pooled, noise=noise)


def test_model_weights_are_untouched(tiny_flux):
    before = {k: v.clone() for k, v in tiny_flux.state_dict().items()}
    _both(tiny_flux, layer=4)
    after = tiny_flux.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_packing_matches_diffusers_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 8, 12)
    assert torch.equal(pack_latents(x), FluxPipeline._pack_latents(x, 2, 16, 8, 12))


# --- bad input ------------------------------------------------------------------------------------------------
def _call(model, **overrides):
    latents, noise = latents_and_noise(batch=1, ensemble=1)
    text, pooled = torch.zeros(1, 8, 32), torch.zeros(1, 32)  # the tiny models' sizes
    kwargs = dict(t=0.26, layer=2, text_embeds=text, pooled=pooled, noise=noise)
    kwargs.update(overrides)
    return extract_from_latents(model, kwargs.pop("latents", latents), **kwargs)


@pytest.mark.parametrize("layer", [-1, 6, 100])
def test_layer_out_of_range_names_the_valid_range(tiny_flux, layer):
    with pytest.raises(ValueError, match=r"use 0\.\.5 \(0\.\.1 double blocks, 2\.\.5 single blocks\)"):
        _call(tiny_flux, layer=layer)


def test_sd3_layer_error_names_its_range(tiny_sd3):
    with pytest.raises(ValueError, match=r"use 0\.\.3"):
        _call(tiny_sd3, layer=4)


@pytest.mark.parametrize("t", [0, 1, 1.5, -0.1, math.nan, math.inf, "0.3", None, True])
def test_timestep_outside_open_unit_interval(tiny_flux, t):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        _call(tiny_flux, t=t)


def test_non_dit_model_names_supported_families():
    with pytest.raises(UnsupportedModelError, match="Flux transformer, SD3/SD3.5 transformer"):
        _call(torch.nn.Linear(4, 4))


def test_unet_is_rejected():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(UnsupportedModelError, match="UNet2DModel is not a supported"):
        _call(unet)


def test_wrong_text_width_is_explained(tiny_flux):
    with pytest.raises(ValueError, match=r"text_embeds must be \[B, L, 32\]"):
        _call(tiny_flux, text_embeds=torch.zeros(1, 8, 64))


def test_wrong_latent_channels_are_explained(tiny_flux):
    with pytest.raises(ValueError, match="16-channel latents, got 4"):
        _call(tiny_flux, latents=torch.zeros(1, 4, 16, 16), noise=None)


def test_odd_latent_size_is_explained(tiny_flux):
    with pytest.raises(ValueError, match="multiple of 16 pixels"):
        _call(tiny_flux, latents=torch.zeros(1, 16, 15, 16), noise=None)


def test_mismatched_noise_is_explained(tiny_flux):
    with pytest.raises(ValueError, match=r"noise must be \[E, 1, 16, 16, 24\]"):
        _call(tiny_flux, noise=torch.zeros(2, 1, 16, 8, 8))


@pytest.mark.parametrize("discard, error", [((64,), "out of range"), ((1.5,), "integers")])
def test_bad_discard_channels(tiny_flux, discard, error):
    with pytest.raises((ValueError, TypeError), match=error):
        _call(tiny_flux, discard=discard)


def test_sd3_resolution_beyond_position_embeddings(tiny_sd3):
    with pytest.raises(ValueError, match="at most 128x128 tokens"):
        _call(tiny_sd3, latents=torch.zeros(1, 16, 258, 16), noise=None)
