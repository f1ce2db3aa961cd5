"""Bounded work for values a shared workflow can carry (issue 10): the points cap, chunked searches that report
progress and stop when it raises, Cancel inside a capture pass, the resolution bound of each family and the memory
plan of a capture - each checked before any work."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import conditioning, latents_and_noise

from ditf_core import DiTFPipeline
from ditf_core.errors import DiTFInputError
from ditf_core.families.flux import FluxFamily
from ditf_core.families.sd3 import SD3Family
from ditf_core.features import DiTFeatures
from ditf_core.mapping import PixelMapping
from ditf_core.matching import match_dense, match_points, parse_points
from ditf_core.matching.points import MAX_POINTS
from ditf_core.matching.search import UpsampledTarget, exact_point_matches
from ditf_core.recipe import PASS_BYTES_PER_TOKEN_CHANNEL, capture_ensemble, kept_bytes, plan_passes


def random_features(image_size=(64, 48), grid=(8, 6), channels=16, seed=0) -> DiTFeatures:
    w, h = grid
    features = torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(seed))
    return DiTFeatures(features, PixelMapping(image_size, (w * 16, h * 16), grid))


class Stop(Exception):
    """What a Cancel raises, in these tests."""


def stop_at(call: int, calls: list):
    """A progress / interrupt callable that records its arguments and raises on its ``call``-th call."""

    def report(*args):
        calls.append(args)
        if len(calls) == call:
            raise Stop

    return report


# --- points ---------------------------------------------------------------------------------------------------------
def test_more_points_than_the_cap_are_refused_with_the_cap_and_how_to_split():
    too_many = json.dumps([{"x": 1, "y": 2}] * (MAX_POINTS + 1))
    with pytest.raises(DiTFInputError, match=f"points holds 1,025 points, more than the {MAX_POINTS:,} one match "
                                             "takes; split them into several matches") as refused:
        parse_points(too_many)
    assert "dense matches" in str(refused.value)
    assert parse_points(json.dumps([[1, 2]] * MAX_POINTS)).shape == (MAX_POINTS, 2)
    with pytest.raises(DiTFInputError, match="more than the"):
        parse_points(torch.zeros(MAX_POINTS + 1, 2))
    source, target = random_features(seed=1), random_features(seed=2)
    with pytest.raises(DiTFInputError, match="points holds 1,025 points"):
        match_points(source, target, torch.zeros(MAX_POINTS + 1, 2))
    unlimited = match_points(source, target, torch.zeros(MAX_POINTS + 1, 2), point_limit=None)  # the library may
    assert unlimited.points.shape == (1, MAX_POINTS + 1, 2)


def test_points_text_too_long_for_the_cap_is_refused_before_parsing():
    text = "[" + " " * (MAX_POINTS * 128) + "oops"  # invalid JSON: a parse would say so instead
    with pytest.raises(DiTFInputError, match=r"points text is 131,077 characters long, too long for the 1,024 points"):
        parse_points(text)
    assert parse_points("[" + " " * 1000 + "]", limit=None).shape == (0, 2)


# --- chunked searches: bounded memory, progress, stop between chunks -----------------------------------------------
def test_exact_search_works_through_the_points_in_chunks_that_fit_the_budget():
    source = random_features((36, 28), (6, 4), seed=10).features[0]
    target = random_features((40, 30), (5, 4), seed=3).features[0]
    budget = 2000
    prepared = UpsampledTarget.prepare(target, (40, 30), budget)
    step = prepared.points_per_chunk(budget)
    assert step == budget // (5 * 40) and step * (4 + 1) * 40 <= budget  # [n, h+1, W] dots fit
    xy = torch.stack([torch.arange(23) % 36, torch.arange(23) % 28], dim=1)
    calls = []
    chunked = exact_point_matches(source, xy, (36, 28), target, (40, 30), chunk_elements=budget,
                                  progress=lambda done, total: calls.append((done, total)))
    whole = exact_point_matches(source, xy, (36, 28), target, (40, 30), chunk_elements=1 << 24)
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    total = math.ceil(23 / step)
    assert calls == [(done, total) for done in range(1, total + 1)]


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_a_raising_progress_stops_point_matching_between_chunks(mode):
    source, target = random_features(seed=5), random_features(seed=6)
    points = torch.rand(50, 2, generator=torch.Generator().manual_seed(7)) * 40
    calls = []
    with pytest.raises(Stop):
        match_points(source, target, points, mode=mode, chunk_elements=400, progress=stop_at(2, calls))
    assert len(calls) == 2  # no chunk ran after the one that raised
    done, total = calls[-1]
    assert done < total  # there was work left


def test_dense_matching_reports_a_growing_fraction_and_stops_when_asked():
    source, target = random_features(seed=8), random_features(seed=9)
    calls = []
    match_dense(source, target, chunk_elements=100, progress=lambda done, total: calls.append(done / total))
    assert calls == sorted(calls) and calls[-1] == 1.0 and len(calls) > 4
    stopped = []
    with pytest.raises(Stop):
        match_dense(source, target, chunk_elements=100, progress=stop_at(3, stopped))
    assert len(stopped) == 3


# --- Cancel inside a capture pass -----------------------------------------------------------------------------------
def _capture(model, layers, **options):
    latents, noise = latents_and_noise(batch=2, ensemble=2)
    text, pooled = conditioning(model)
    return capture_ensemble(model, latents, t=0.26, layers=layers, text_embeds=text, pooled=pooled, noise=noise,
                            **options)


def test_interrupt_is_called_before_every_block_up_to_the_deepest_requested(tiny_flux):
    calls = []
    _capture(tiny_flux, [1, 3], interrupt=lambda: calls.append(1), micro_batch=2)
    assert len(calls) == 2 * 4  # 2 passes (one per draw) x blocks 0..3, none after the early exit


@pytest.mark.parametrize("fixture", ["tiny_flux", "tiny_sd3"])
def test_an_interrupt_stops_the_pass_at_the_next_block_and_leaves_no_hook(request, fixture):
    model = request.getfixturevalue(fixture)
    ran = []
    blocks = FluxFamily().blocks(model) if fixture == "tiny_flux" else SD3Family().blocks(model)
    watchers = [block.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, block in enumerate(blocks)]
    calls = []
    try:
        with pytest.raises(Stop):
            _capture(model, [3], interrupt=stop_at(3, calls))
    finally:
        for watcher in watchers:
            watcher.remove()
    assert ran == [0, 1]  # block 2's check raised before block 2 ran
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in blocks)
    assert 3 in _capture(model, [3])  # the model works as before


# --- resolution bound -----------------------------------------------------------------------------------------------
def test_flux_resolution_is_bounded_by_its_token_budget_with_the_largest_allowed_value(tiny_flux):
    family = FluxFamily()
    with pytest.raises(ValueError, match=r"resolution 4096 gives 256x192 = 49,152 tokens, more than the 16,384 one "
                                         r"image may bring to a Flux transformer pass .*the largest resolution for "
                                         r"this 384x288 image is (\d+)") as refused:
        family.check_resolution(tiny_flux, (384, 288), 4096)
    largest = int(str(refused.value).rsplit(" ", 1)[-1])
    assert largest % 16 == 0
    grid = family.check_resolution(tiny_flux, (384, 288), largest).grid_size
    assert grid[0] * grid[1] <= 16384
    with pytest.raises(ValueError, match="16,384"):
        family.check_resolution(tiny_flux, (384, 288), largest + 16)
    panorama = family.check_resolution(tiny_flux, (4096, 512), 4096)  # RoPE has no side limit: tokens count
    assert panorama.grid_size == (256, 32)


def test_sd3_resolution_is_bounded_by_its_position_embeddings(tiny_sd3):
    with pytest.raises(ValueError, match=r"resolution 2064 gives 129 tokens along one side, but this SD3/SD3.5 "
                                         r"transformer has position embeddings for at most 128x128 tokens \(2048 px\); "
                                         r"the largest resolution for this 300x100 image is 2048"):
        SD3Family().check_resolution(tiny_sd3, (300, 100), 2064)
    assert SD3Family().check_resolution(tiny_sd3, (300, 100), 2048).grid_size == (128, 43)


def test_the_pipeline_refuses_a_resolution_before_any_vae_or_transformer_work():
    pipeline = DiTFPipeline.demo()
    ran = []
    pipeline.transformer.register_forward_pre_hook(lambda *_: ran.append(1))
    with pytest.raises(ValueError, match="resolution 4096 gives 256x192"):
        pipeline.capture(torch.rand(1, 3, 288, 384), resolution=4096, ensemble=1)
    assert pipeline.vae_encode_calls == 0 and not ran


# --- memory plan ----------------------------------------------------------------------------------------------------
def test_the_memory_plan_splits_images_over_passes_and_refuses_what_cannot_fit():
    shape = dict(images=4, tokens=100, hidden_size=64, blocks_kept=6)
    kept = kept_bytes(4, 100, 64, 6)
    per_image = 100 * 64 * PASS_BYTES_PER_TOKEN_CHANNEL
    assert kept == 4 * 100 * 64 * 6 * 4
    assert plan_passes(**shape, available_bytes=None) == 4
    assert plan_passes(**shape, available_bytes=kept + 10 * per_image) == 4
    assert plan_passes(**shape, available_bytes=kept + 2 * per_image + 1) == 2
    assert plan_passes(**shape, available_bytes=kept + per_image) == 1
    with pytest.raises(DiTFInputError, match=r"needs about 1.2 MB \(4 image\(s\) x 100 tokens x 64 channels x 6 "
                                             r"block\(s\) kept x 4 bytes = 614.4 kB, plus 614.4 kB for one image's "
                                             r"forward pass\) but only 1.2 MB is free in RAM; use fewer "
                                             r"images or a lower resolution, or keep fewer blocks \(fewer layers; "
                                             r"sweep off"):
        plan_passes(**shape, available_bytes=kept + per_image - 1)
    with pytest.raises(DiTFInputError, match=r"free in cuda:1 memory; use fewer images or a lower resolution$"):
        plan_passes(**{**shape, "blocks_kept": 1}, available_bytes=1, device="cuda:1")


def test_the_pipeline_plans_passes_from_free_memory_before_any_work():
    pipeline = DiTFPipeline.demo()
    images = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    settings = dict(resolution=64, ensemble=2, seed=1)
    passes = []
    whole = pipeline.capture(images, **settings, progress=lambda done, total: passes.append(total))
    tokens, width = 4 * 3, 64  # 64x48 px -> 4x3 tokens of a 64-wide model
    one_image = kept_bytes(3, tokens, width, 1) + tokens * width * PASS_BYTES_PER_TOKEN_CHANNEL
    split = pipeline.capture(images, **settings, available_memory=one_image,
                             progress=lambda done, total: passes.append(total))
    assert passes[0] == 1 and passes[-1] == 6  # every row at once (the default), then one image and draw a pass
    torch.testing.assert_close(split.layers[3].hidden, whole.layers[3].hidden, atol=1e-5, rtol=1e-5)
    calls = pipeline.vae_encode_calls
    with pytest.raises(DiTFInputError, match="this capture needs about"):
        pipeline.capture(images, **settings, available_memory=one_image - 1)
    assert pipeline.vae_encode_calls == calls
