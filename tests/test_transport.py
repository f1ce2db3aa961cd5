"""Massive activations at work, on tensors: channel selection, disruption, transport, the K-means MA mask, the
transport source that follows a sampler, the settings parsers and the per-block patch specs."""

from __future__ import annotations

import pytest
import torch

from ditf_core.transport import (
    Disruption,
    MassiveZeroing,
    NoisedReference,
    SourceTrajectory,
    Transport,
    channel_mask,
    check_window,
    control_channels,
    detail_guidance,
    disrupt,
    flow_noise_scaling,
    joint_mask,
    kmeans_foreground,
    ma_mask,
    mask_to_grid,
    massive_channels,
    min_max,
    parse_blocks,
    transport,
)
from ditf_core.transport.mask import mask_image, mask_overlay
from ditf_core.transport.source import COND, UNCOND

PLANTED = (3, 17)


def hidden_with_massive(batch=2, tokens=48, width=32, seed=0) -> torch.Tensor:
    """Random tokens with two planted massive channels (large mean, varying over tokens) and a near-zero channel 5."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, tokens, width, generator=generator)
    hidden[..., PLANTED[0]] += 500.0 + 20 * torch.randn(batch, tokens, generator=generator)
    hidden[..., PLANTED[1]] -= 300.0
    hidden[..., 5] = 1e-4 * torch.randn(batch, tokens, generator=generator)
    return hidden


# --- channel selection and disruption ------------------------------------------------------------------------------
def test_massive_channels_are_the_top_k_by_absolute_token_mean():
    hidden = hidden_with_massive()
    assert massive_channels(hidden, 2).tolist() == [list(PLANTED)] * 2
    statistic = hidden.mean(dim=1).abs()
    for row in range(2):
        assert set(massive_channels(hidden, 5)[row].tolist()) == set(statistic[row].topk(5).indices.tolist())
    # mean first, then abs: a channel alternating +-1000 over tokens has mean 0 and is not massive
    hidden[:, ::2, 9], hidden[:, 1::2, 9] = 1000.0, -1000.0
    assert 9 not in massive_channels(hidden, 2)[0].tolist()


def test_control_channels_are_the_k_lowest():
    hidden = hidden_with_massive()
    control = control_channels(hidden, 3)
    assert control[:, 0].tolist() == [5, 5]
    assert not set(control.flatten().tolist()) & set(PLANTED)
    statistic = hidden.mean(dim=1).abs()
    assert set(control[0].tolist()) == set(statistic[0].topk(3, largest=False).indices.tolist())


def test_disrupt_zeroes_exactly_those_channels_per_row():
    hidden = hidden_with_massive()
    channels = torch.tensor([[3, 17], [0, 1]])
    out = disrupt(hidden, channels)
    assert out[0][:, [3, 17]].abs().max() == 0 and out[1][:, [0, 1]].abs().max() == 0
    keep = [c for c in range(32) if c not in (3, 17)]
    assert torch.equal(out[0][:, keep], hidden[0][:, keep]) and torch.equal(out[1][:, 3], hidden[1][:, 3])
    assert torch.equal(disrupt(hidden, torch.tensor([4])), disrupt(hidden, torch.tensor([[4], [4]])))
    assert hidden[0, 0, 3] != 0  # the input is not changed
    with pytest.raises(ValueError, match="channels must be integers in 0..31, got \\[40\\]"):
        disrupt(hidden, [3, 40])  # a user's list is checked (computed index tensors are trusted)


@pytest.mark.parametrize("bad, message", [(0, "top_k must be in 1..32"), (33, "top_k must be in 1..32"),
                                          (2.5, "top_k must be an integer"), (True, "top_k must be an integer")])
def test_top_k_is_checked_against_the_width(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        massive_channels(hidden_with_massive(), bad)


# --- transport -------------------------------------------------------------------------------------------------------
def test_transport_equals_the_joint_mask_formula():
    target, source = hidden_with_massive(seed=1), hidden_with_massive(seed=2)
    channels = massive_channels(source, 4)
    spatial = torch.rand(2, 48, generator=torch.Generator().manual_seed(3))
    joint = joint_mask(spatial, channels, 32)
    assert torch.equal(joint, spatial[:, :, None] * channel_mask(channels, 32)[:, None, :])
    for strength in (0.3, 1.0):
        expected = target * (1 - strength * joint) + source * (strength * joint)
        assert torch.allclose(transport(target, source, channels, spatial, strength), expected, rtol=1e-5, atol=1e-3)


def test_transport_identities_are_bit_exact():
    target, source = hidden_with_massive(seed=1), hidden_with_massive(seed=2)
    channels = massive_channels(source, 4)
    assert torch.equal(transport(target, source, channels, None, 0.0), target)
    assert torch.equal(transport(target, target.clone(), channels, None, 1.0), target)
    zero = torch.zeros(2, 48)
    assert torch.equal(transport(target, source, channels, zero, 1.0), target)
    everything = torch.arange(32).expand(2, -1)
    assert torch.equal(transport(target, source, everything, torch.ones(2, 48), 1.0), source)
    half = transport(target, source, channels, None, 1.0)
    outside = [c for c in range(32) if c not in channels[0].tolist()]
    assert torch.equal(half[0][:, outside], target[0][:, outside])


def test_transport_keeps_the_dtype_and_moves_monotonically():
    target, source = hidden_with_massive(seed=1).bfloat16(), hidden_with_massive(seed=2).bfloat16()
    channels = massive_channels(source, 2)
    gaps = [float((transport(target, source, channels, None, s).float() - source.float()).norm())
            for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert transport(target, source, channels, None, 0.5).dtype == torch.bfloat16
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


@pytest.mark.parametrize("strength", [float("nan"), -0.1, 1.5, "1"])
def test_transport_strength_is_checked(strength):
    hidden = hidden_with_massive()
    with pytest.raises((TypeError, ValueError), match="strength"):
        transport(hidden, hidden, massive_channels(hidden, 2), None, strength)


def test_detail_guidance_adds_the_weighted_difference():
    guided, cond, perturbed = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    assert detail_guidance(guided, cond, perturbed, 0.0) is guided
    assert torch.allclose(detail_guidance(guided, cond, perturbed, 2.0), guided + 2.0 * (cond - perturbed))


# --- the K-means MA mask -----------------------------------------------------------------------------------------------
def planted_region(grid=(12, 16), seed=0):
    """Tokens whose massive channels are larger inside a rectangle (the planted foreground), plus noise."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = grid
    truth = torch.zeros(rows, cols)
    truth[3:9, 4:11] = 1.0
    hidden = torch.randn(1, rows * cols, 32, generator=generator)
    footprint = truth.flatten()
    hidden[0, :, PLANTED[0]] = 400.0 + 60.0 * footprint + 8.0 * torch.randn(rows * cols, generator=generator)
    hidden[0, :, PLANTED[1]] = -300.0 - 45.0 * footprint + 8.0 * torch.randn(rows * cols, generator=generator)
    return hidden, truth


def iou(mask, truth):
    return float((mask * truth).sum() / ((mask + truth) > 0).sum())


def test_kmeans_mask_recovers_a_planted_foreground():
    hidden, truth = planted_region()
    mask = ma_mask(hidden, top_k=2).reshape(truth.shape)
    print(f"K-means MA mask IoU on the planted tensor: {iou(mask, truth):.3f}")
    assert iou(mask, truth) >= 0.9
    # foreground = the cluster with the larger mean summed (normalised) value, whatever sign the channels have
    flipped = hidden.clone()
    flipped[0, :, PLANTED[0]] = 800.0 - flipped[0, :, PLANTED[0]]
    flipped[0, :, PLANTED[1]] = -600.0 - flipped[0, :, PLANTED[1]]
    assert iou(ma_mask(flipped, top_k=2).reshape(truth.shape), 1 - truth) >= 0.9


def test_kmeans_is_deterministic_and_handles_degenerate_rows():
    hidden, _ = planted_region()
    assert torch.equal(ma_mask(hidden, top_k=2), ma_mask(hidden.clone(), top_k=2))
    flat = torch.ones(1, 30, 4)
    assert torch.equal(kmeans_foreground(min_max(flat)), torch.zeros(1, 30))
    normalised = min_max(torch.randn(3, 20, 5))
    assert float(normalised.min()) == 0.0 and float(normalised.max()) == 1.0


def test_mask_image_and_overlay_have_the_picture_size():
    hidden, truth = planted_region()
    mask = mask_image(hidden, (12, 16), (120, 160), top_k=2)
    assert mask.shape == (1, 120, 160) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert iou(mask, torch.nn.functional.interpolate(truth[None, None], size=(120, 160))[0]) >= 0.9
    pixels = torch.rand(1, 3, 120, 160)
    overlay = mask_overlay(pixels, mask)
    assert torch.equal(overlay[:, :, mask[0] > 0], pixels[:, :, mask[0] > 0])
    with pytest.raises(ValueError, match="12x16 grid"):
        mask_image(hidden[:, :100], (12, 16), (120, 160))


def test_mask_to_grid_resizes_and_checks_the_aspect():
    mask = torch.zeros(1, 96, 128)
    mask[:, :48] = 1.0
    grid = mask_to_grid(mask, (6, 8))
    assert grid.shape == (1, 48) and torch.equal(grid.reshape(6, 8)[:3], torch.ones(3, 8))
    assert mask_to_grid(mask[0], (12, 16)).shape == (1, 192)
    with pytest.raises(ValueError, match="spatial_mask is 128x96 px but .* 8x8 token grid"):
        mask_to_grid(mask, (8, 8), "spatial_mask")


# --- the source that follows the sampler -----------------------------------------------------------------------------
def euler_like_comfy(x, sigmas, denoise):
    """k-diffusion's sample_euler (ComfyUI): d = (x - D) / sigma; x = x + d * (sigma_next - sigma)."""
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        d = (x - denoised) / sigmas[i].reshape(1, 1, 1, 1)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def test_source_trajectory_follows_euler_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 6, 6, generator=generator)
    target_clean = torch.randn(2, 4, 6, 6, generator=generator)
    sigmas = torch.tensor([1.0, 0.75, 0.4, 0.1, 0.0])

    def denoise(x, sigma):
        return 0.5 * x + sigma * target_clean

    expected = euler_like_comfy(noise, sigmas, denoise)
    source = SourceTrajectory(noise, sigmas[0], noise, 1.0, flow_noise_scaling)
    for sigma in sigmas[:-1]:
        x = source.latent_at(sigma)
        source.latent_at(sigma)  # a second call at the same sigma (heun's corrector) changes nothing
        source.record(sigma, COND, denoise(x, sigma))
    last = source.latent_at(sigmas[-1])
    assert torch.equal(last, expected)


def test_source_trajectory_cfg_first_record_and_renoise():
    noise = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    source = SourceTrajectory(noise, torch.tensor(1.0), noise, 3.0, flow_noise_scaling)
    cond, uncond = torch.full_like(noise, 2.0), torch.full_like(noise, 1.0)
    source.record(torch.tensor(1.0), COND, cond)
    source.record(torch.tensor(1.0), UNCOND, uncond)
    source.record(torch.tensor(1.0), COND, torch.zeros_like(noise))  # a later guidance pass: ignored
    assert torch.equal(source.prediction(), uncond + (cond - uncond) * 3.0)
    x = source.latent_at(torch.tensor(0.5))
    assert torch.allclose(x, noise + (noise - 4.0) * -0.5)
    assert source.prediction() is not None  # nothing recorded at 0.5 yet: the latest clean prediction
    back = source.latent_at(torch.tensor(0.8))  # a sampler going back up: re-noised from the clean prediction
    assert torch.allclose(back, 0.8 * noise + 0.2 * torch.full_like(noise, 4.0))


def test_noised_reference_uses_fixed_noise():
    reference = torch.randn(1, 4, 5, 5)
    noise = torch.randn(3, 4, 5, 5)
    source = NoisedReference(reference, noise, flow_noise_scaling)
    assert source.batch == 3 and source.shape == (3, 4, 5, 5)
    for sigma in (0.9, 0.2):
        assert torch.allclose(source.latent_at(torch.tensor(sigma)), sigma * noise + (1 - sigma) * reference)
    with pytest.raises(ValueError, match="do not match"):
        NoisedReference(torch.randn(2, 4, 5, 5), noise, flow_noise_scaling)


# --- settings --------------------------------------------------------------------------------------------------------
def test_parse_blocks():
    assert parse_blocks("all", 6) == list(range(6))
    assert parse_blocks(" 0 - 2, 5 4", 6) == [0, 1, 2, 4, 5]
    assert parse_blocks("", 6) == [] and parse_blocks("none", 6) == []


@pytest.mark.parametrize("text, message", [("7", "blocks: this model has no block 7; use 0..5 \\(2 double \\+ 4 single"),
                                           ("x", "blocks: cannot read 'x'"), ("4-2", "runs backwards"),
                                           ("-1", "cannot read '-1'")])
def test_bad_blocks_name_the_input(text, message):
    with pytest.raises(ValueError, match=message):
        parse_blocks(text, 6, 2)


def test_check_window():
    assert check_window(0, 1) == (0.0, 1.0)
    for start, end, message in ((0.5, 0.2, "start_percent"), (float("nan"), 1.0, "start_percent"),
                                (0.0, 1.5, "end_percent")):
        with pytest.raises(ValueError, match=message):
            check_window(start, end)


# --- per-block specs ---------------------------------------------------------------------------------------------------
def test_disruption_and_control_specs():
    hidden = hidden_with_massive()
    disrupted, control = Disruption(2).apply(hidden), Disruption(2, control=True).apply(hidden)
    assert disrupted[..., list(PLANTED)].abs().max() == 0
    assert float((disrupted - hidden).norm()) > 100 * float((control - hidden).norm())


def test_massive_zeroing_finds_the_planted_channels_or_uses_a_list():
    hidden = hidden_with_massive()
    hidden[..., PLANTED[1]] = -300.0 + torch.randn(2, 48)  # median |.| >= 100 x the map's: the project's rule
    found = MassiveZeroing().apply(hidden)
    assert found[..., list(PLANTED)].abs().max() == 0
    assert torch.equal(MassiveZeroing((1, 2)).apply(hidden), disrupt(hidden, torch.tensor([1, 2])))
    plain = torch.randn(2, 48, 32)
    assert MassiveZeroing().apply(plain) is plain  # nothing massive: untouched


@pytest.mark.parametrize("mode", ["source", "target", "union", "mask", "none"])
def test_transport_spec_masks(mode):
    target, truth = planted_region(seed=1)
    source, _ = planted_region(seed=2)
    user = truth.flatten()[None]
    out = Transport(2, 1.0, mode).apply(target, source, user if mode == "mask" else None)
    moved = (out - target)[0, :, list(PLANTED)].abs().sum(dim=1) > 0
    if mode == "none":
        assert bool(moved.all())
    else:
        assert iou(moved.float(), truth.flatten()) >= 0.9
    with pytest.raises(ValueError, match="mask must be one of"):
        Transport(2, 1.0, "everywhere")
