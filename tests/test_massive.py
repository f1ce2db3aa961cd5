"""Planted massive activations are found exactly, and discarding them restores matching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import PLANTED, conditioning

from ditf_core import capture_ensemble, extract_from_latents, find_massive_channels
from ditf_core.massive import channel_magnitudes


def _block_inputs(model, layers, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, 16, 16, generator=generator)
    noise = torch.randn(2, 1, 16, 16, 16, generator=generator)
    text, pooled = conditioning(model)
    return capture_ensemble(model, latents, t=0.26, layers=layers, text_embeds=text, pooled=pooled, noise=noise)


def test_planted_channels_found_exactly_after_the_planted_block(planted_flux):
    captured = _block_inputs(planted_flux, [1, 2, 3, 5])
    assert find_massive_channels(captured[1].hidden) == []  # planted in block 1: its input is still clean
    for layer in (2, 3, 5):
        hidden = captured[layer].hidden
        found = find_massive_channels(hidden)
        assert sorted(found) == sorted(PLANTED)
        per_channel, overall = channel_magnitudes(hidden)
        assert per_channel[found[0]] >= per_channel[found[1]]  # sorted by magnitude
        assert all(per_channel[c] / overall > 100 for c in found)


def test_clean_random_model_has_no_massive_channel(tiny_flux, tiny_sd35):
    for model, layers in ((tiny_flux, [1, 3, 5]), (tiny_sd35, [1, 3])):
        for captured in _block_inputs(model, layers).values():
            assert find_massive_channels(captured.hidden) == []
            per_channel, overall = channel_magnitudes(captured.hidden)
            assert (per_channel / overall).max() < 20  # a clean random model: ratios of a few


def test_planted_channels_vary_from_token_to_token(planted_flux):
    hidden = _block_inputs(planted_flux, [3])[3].hidden[0]  # [N, C]
    for channel in PLANTED:
        values = hidden[:, channel]
        assert values.std() / values.abs().mean() > 0.01


def test_rule_on_hand_made_maps():
    hidden = torch.ones(2, 50, 8)
    hidden[..., 2] = 150.0
    hidden[..., 6] = -300.0
    hidden[..., 4] = 99.0  # just under the 100x rule
    assert find_massive_channels(hidden) == [6, 2]
    assert find_massive_channels(hidden, ratio=50) == [6, 2, 4]
    assert find_massive_channels(torch.zeros(10, 4)) == []


@pytest.mark.parametrize("ratio", [0, -1, float("nan"), "100"])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio must be a positive"):
        find_massive_channels(torch.ones(4, 4), ratio=ratio)


def _crop_matching_accuracy(model, discard, layer=3):
    """Nearest-neighbour matching between two overlapping crops of one smooth latent (4 tokens apart)."""
    generator = torch.Generator().manual_seed(0)
    field = F.interpolate(torch.randn(1, 16, 12, 14, generator=generator), size=(32, 40), mode="bicubic")
    crops = field[..., 0:32], field[..., 8:40]
    noise = torch.randn(4, 1, 16, 32, 32, generator=generator)
    text, pooled = conditioning(model)
    a, b = (
        F.normalize(
            extract_from_latents(model, crop, t=0.26, layer=layer, text_embeds=text, pooled=pooled, noise=noise,
                                 discard=discard)[0].flatten(1).T,
            dim=1,
        )
        for crop in crops
    )
    cells = torch.arange(16 * 16)
    rows, cols = cells // 16, cells % 16
    overlap = cols >= 4
    predicted = (a[overlap] @ b.T).argmax(1)
    return (predicted == rows[overlap] * 16 + cols[overlap] - 4).float().mean().item()


def test_two_massive_channels_break_matching_and_discard_restores_it(tiny_flux, planted_flux):
    assert _crop_matching_accuracy(tiny_flux, ()) > 0.95
    assert _crop_matching_accuracy(planted_flux, ()) < 0.6
    assert _crop_matching_accuracy(planted_flux, PLANTED) > 0.95
