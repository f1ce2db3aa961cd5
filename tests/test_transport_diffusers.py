"""The diffusers host of massive activations at work: the context manager inside sampling loops and a real pipeline
call on tiny planted models, its hooks removed whatever happens, the runnable example, the demo section."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from ditf_core.demo_model import DEMO_MASSIVE_CHANNELS, build_demo_dit, build_tiny_sd3, plant_massive_activations
from ditf_core.families import family_for
from ditf_core.transport import Disruption, MassiveZeroing, Transport
from ditf_core.transport.demo import build_foreground_dit, iou, planted_scene, run_ma_demo, sample_flow
from ditf_core.transport.diffusers_hooks import (
    DetailGuidancePatch,
    DisruptionPatch,
    TransportPatch,
    massive_activations,
)
from ditf_core.transport.mask import ma_mask

ROOT = Path(__file__).resolve().parents[1]
K = len(DEMO_MASSIVE_CHANNELS)


@pytest.fixture(scope="module")
def dit():
    return build_demo_dit(0)


@pytest.fixture(scope="module")
def prompts():
    """Target and source text that differ in their tokens only (the tiny model's pooled vector would otherwise
    dominate every block's modulation), and the initial noise."""
    generator = torch.Generator().manual_seed(0)
    pooled = torch.randn(1, 32, generator=generator)
    target, source = torch.randn(1, 4, 32, generator=generator), torch.randn(1, 4, 32, generator=generator)
    return target, source, pooled, torch.randn(1, 16, 16, 16, generator=generator)


def hook_count(transformer) -> int:
    modules = [transformer, *family_for(transformer).blocks(transformer)]
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in modules)


def test_disrupting_the_planted_channels_changes_the_sample_far_more_than_the_control(dit, prompts):
    target, _, pooled, noise = prompts
    plain = sample_flow(dit, noise, target, pooled)
    changes = {}
    for control in (False, True):
        with massive_activations(dit, disruption=DisruptionPatch(range(6), Disruption(K, control))):
            changes[control] = float((sample_flow(dit, noise, target, pooled) - plain).norm())
    ratio = changes[False] / changes[True]
    print(f"diffusers host: disruption {changes[False]:.4g}, control {changes[True]:.4g}, ratio {ratio:.0f}x")
    assert ratio > 100
    assert hook_count(dit) == 0


def test_transport_moves_the_sample_to_the_source_monotonically(dit, prompts):
    target, source, pooled, noise = prompts
    source_sample = sample_flow(dit, noise, source, pooled)
    gaps = []
    for strength in (0.0, 0.25, 0.5, 0.75, 1.0):
        patch = TransportPatch(range(6), Transport(K, strength, "none"), source_embeds=source, source_pooled=pooled)
        with massive_activations(dit, transport=patch):
            gaps.append(float((sample_flow(dit, noise, target, pooled) - source_sample).norm()))
    print("diffusers host: distance to the source by strength", [round(g, 5) for g in gaps])
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 0.05 * gaps[0]


def test_full_transport_hands_the_source_tokens_to_every_patched_block(dit, prompts):
    target, source, pooled, noise = prompts
    family = family_for(dit)
    seen: dict[int, list[torch.Tensor]] = {1: [], 4: []}

    def probe():  # registered after the context's own hooks, so it sees what the block receives
        return [family.blocks(dit)[b].register_forward_pre_hook(
            lambda module, args, kwargs, b=b: seen[b].append(family.block_inputs(args, kwargs)[0].clone()),
            with_kwargs=True) for b in seen]

    patch = TransportPatch([1, 4], Transport(64, 1.0, "none"), source_embeds=source, source_pooled=pooled)
    with massive_activations(dit, transport=patch), torch.no_grad():
        probes = probe()
        try:
            family.forward(dit, noise, 1.0, target, pooled, 3.5)
            family.forward(dit, noise, 1.0, source, pooled, 3.5)  # the source on its own (in a new run: at sigma 1)
        finally:
            for handle in probes:
                handle.remove()
    for block, (in_source_pass, in_target_pass, *_, source_alone) in seen.items():
        assert torch.equal(in_target_pass, in_source_pass) and torch.equal(in_source_pass, source_alone), block


def test_strength_zero_and_weight_zero_leave_the_sample_bit_identical(dit, prompts):
    target, source, pooled, noise = prompts
    plain = sample_flow(dit, noise, target, pooled)
    with massive_activations(dit, transport=TransportPatch(range(6), Transport(K, 0.0), source_embeds=source)):
        assert torch.equal(sample_flow(dit, noise, target, pooled), plain)
    with massive_activations(dit, detail_guidance=DetailGuidancePatch(3, 0.0)):
        assert torch.equal(sample_flow(dit, noise, target, pooled), plain)
    with massive_activations(dit, disruption=DisruptionPatch([], Disruption(K))):
        assert torch.equal(sample_flow(dit, noise, target, pooled), plain)


def test_image_source_transport_pulls_towards_the_reference(dit, prompts):
    target, _, pooled, noise = prompts
    reference = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(5))  # packed tokens of 16x16 latents
    plain = sample_flow(dit, noise, target, pooled)
    patch = TransportPatch(range(6), Transport(64, 1.0, "none"), reference=reference, seed=3)
    with massive_activations(dit, transport=patch):
        moved = sample_flow(dit, noise, target, pooled)
    assert float((moved - plain).norm()) > 0.1


def test_detail_guidance_under_cfg_adds_w_times_the_difference_to_the_cfg_result():
    transformer = plant_massive_activations(build_tiny_sd3(0), 0, DEMO_MASSIVE_CHANNELS)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 16, 16, generator=generator)
    negative, positive = torch.randn(1, 6, 32, generator=generator), torch.randn(1, 6, 32, generator=generator)
    pooled = torch.randn(2, 32, generator=generator)
    batch = dict(hidden_states=torch.cat([x, x]), encoder_hidden_states=torch.cat([negative, positive]),
                 pooled_projections=pooled, timestep=torch.full((2,), 600.0), return_dict=False)
    scale, weight = 4.0, 2.0
    with torch.no_grad():
        plain = transformer(**batch)[0]
        with massive_activations(transformer, detail_guidance=DetailGuidancePatch(2, weight), guidance_scale=scale):
            guided = transformer(**batch)[0]
        family = family_for(transformer)
        zero = family.blocks(transformer)[2].register_forward_pre_hook(
            lambda module, args, kwargs: (args, {**kwargs, "hidden_states": MassiveZeroing().apply(kwargs["hidden_states"])}),
            with_kwargs=True)
        try:
            perturbed = transformer(**{k: v[1:] if k != "return_dict" else v for k, v in batch.items()})[0]
        finally:
            zero.remove()
    assert torch.equal(guided[:1], plain[:1])  # the unconditional half is untouched
    cfg = lambda out: out[:1] + scale * (out[1:] - out[:1])  # noqa: E731  (the pipeline's CFG)
    assert torch.allclose(cfg(guided), cfg(plain) + weight * (plain[1:] - perturbed), atol=1e-3, rtol=1e-4)
    assert hook_count(transformer) == 0


def test_under_cfg_only_the_conditional_half_is_transported():
    """A CFG batch [uncond; cond] with full transport (all channels, every token, strength 1) at block 1: the
    conditional row enters the block with the source's own tokens, the unconditional row exactly as without the
    patch (our choice: the negative prompt keeps its meaning)."""
    transformer = plant_massive_activations(build_tiny_sd3(0), 0, DEMO_MASSIVE_CHANNELS)
    family = family_for(transformer)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 16, 16, generator=generator)
    negative, positive, source = (torch.randn(1, 6, 32, generator=generator) for _ in range(3))
    pooled = torch.randn(2, 32, generator=generator)

    def call(conditional):
        return dict(hidden_states=torch.cat([x, x]), encoder_hidden_states=torch.cat([negative, conditional]),
                    pooled_projections=pooled, timestep=torch.full((2,), 600.0), return_dict=False)

    seen: list[torch.Tensor] = []
    probe = family.blocks(transformer)[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(family.block_inputs(args, kwargs)[0].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            transformer(**call(positive))
            transformer(**call(source))
            patch = TransportPatch([1], Transport(64, 1.0, "none"), source_embeds=source, source_pooled=pooled[1:])
            with massive_activations(transformer, transport=patch, guidance_scale=4.0):
                probe.remove()  # again, after the context's hooks: it must see what the block receives
                probe = family.blocks(transformer)[1].register_forward_pre_hook(
                    lambda module, args, kwargs: seen.append(family.block_inputs(args, kwargs)[0].clone()),
                    with_kwargs=True)
                transformer(**call(positive))
    finally:
        probe.remove()
    plain, source_alone, in_source_pass, in_target_pass = seen
    assert torch.equal(in_source_pass, source_alone)
    assert torch.equal(in_target_pass[1:], source_alone[1:])  # the conditional row: the source's tokens
    assert torch.equal(in_target_pass[:1], plain[:1])  # the unconditional row: untouched
    assert not torch.equal(plain[1:], source_alone[1:])
    assert hook_count(transformer) == 0


def test_hooks_are_removed_after_errors_and_interrupts(dit, prompts):
    target, source, pooled, noise = prompts
    patches = dict(disruption=DisruptionPatch([2], Disruption(K)), detail_guidance=DetailGuidancePatch(3, 1.0),
                   transport=TransportPatch([1, 4], Transport(K), source_embeds=source))
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with massive_activations(dit, **patches):
                assert hook_count(dit) == 1 + 1 + 2 + 2  # blocks: 1 disrupted, 1 perturbed, 2 transported; + 2 on the model
                raise error
        assert hook_count(dit) == 0
    with pytest.raises(ValueError, match="block 9 is out of range .* 0..5"):
        with massive_activations(dit, disruption=DisruptionPatch([9])):
            pass
    assert hook_count(dit) == 0


def test_the_planted_foreground_is_recovered_by_the_ma_mask():
    transformer = build_foreground_dit(0)
    family = family_for(transformer)
    latent, truth = planted_scene(0)
    captured = {}
    hook = family.blocks(transformer)[3].register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(tokens=family.block_inputs(args, kwargs)[0].clone()),
        with_kwargs=True)
    try:
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            family.forward(transformer, 0.26 * noise + 0.74 * latent, 0.26, torch.zeros(1, 4, 32), torch.zeros(1, 32), 3.5)
    finally:
        hook.remove()
    for top_k in (K, 12):
        score = iou(ma_mask(captured["tokens"], top_k=top_k).reshape(truth.shape), truth)
        print(f"MA mask IoU on the planted model, top_k {top_k}: {score:.3f}")
        assert score >= 0.9


def test_the_example_runs_on_the_tiny_model(capsys):
    spec = importlib.util.spec_from_file_location("ma_example", ROOT / "examples" / "diffusers_massive_activations.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    numbers = example.main([])
    assert numbers["disruption"] > 100 * numbers["control"]
    assert numbers["source_to_transported"] < 0.1 * numbers["source_to_plain"]
    assert numbers["detail_guidance"] > 0 and "control" in capsys.readouterr().out


def test_demo_section_reports_mask_ratio_and_sweep(tmp_path):
    lines = run_ma_demo(tmp_path)
    assert (tmp_path / "massive_activations.png").stat().st_size > 1000
    text = "\n".join(lines)
    assert "IoU 1.00" in text and "RANDOM weights" in text
    ratio = re.search(r"\((\d+)x\)", text)
    assert ratio and int(ratio[1]) > 100, text
    distances = [float(d) for d in re.search(r"distance to the source sample (.*)", text)[1].split(", ")]
    assert all(a > b for a, b in zip(distances, distances[1:])), text
