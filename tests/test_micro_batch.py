"""Micro-batch size from free device memory (CUDA), unchanged behaviour elsewhere."""

from __future__ import annotations

import math

import pytest
import torch

import ditf_core.pipeline as pipeline_module
from ditf_core import DiTFPipeline
from ditf_core.micro_batch import GIB, auto_micro_batch, choose_micro_batch, row_bytes
from ditf_core.samples import sample_scene


def test_the_micro_batch_is_what_fits_with_a_floor_of_one():
    assert choose_micro_batch(8, per_row=100, free=10_000) == 8
    assert choose_micro_batch(8, per_row=100, free=500, reserved=50) == 4  # (0.9 * 500 - 50) // 100
    assert choose_micro_batch(8, per_row=100, free=112) == 1
    with pytest.raises(ValueError, match=r"one image with one noise draw needs about 1\.50 GiB.*0\.50 GiB are free.*"
                                         r"--micro-batch 1 to try anyway"):
        choose_micro_batch(8, per_row=GIB, free=GIB // 2, reserved=GIB // 2, device="cuda:0")


def test_flux_dev_at_640_px_needs_a_quarter_gib_per_row_in_bf16():
    per_row = row_bytes(image_tokens=40 * 40, text_tokens=512, hidden_size=3072, dtype=torch.bfloat16)
    assert per_row == 16 * 2112 * 3072 * 2 + 1600 * 3072 * 4
    assert 0.2 < per_row / GIB < 0.25


def test_free_cuda_memory_sets_the_micro_batch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * GIB, 80 * GIB))
    options = dict(rows=16, images=2, image_tokens=1600, text_tokens=512, hidden_size=3072, dtype=torch.bfloat16)
    assert auto_micro_batch(torch.device("cuda:0"), layers=1, **options) == 16
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1 * GIB, 80 * GIB))
    # (0.9 GiB - 2 images x 1600 x 3072 x 4 B of sums = 0.86 GiB) // 0.212 GiB per row
    assert auto_micro_batch(torch.device("cuda:0"), layers=1, **options) == 4
    assert auto_micro_batch(torch.device("cpu"), layers=57, **options) is None


def test_the_pipeline_asks_for_a_micro_batch_and_uses_it(monkeypatch, planted_flux, tiny_vae):
    asked = []

    def two_rows(device, **sizes):
        asked.append(sizes)
        return 2

    pipe = DiTFPipeline(planted_flux, tiny_vae)
    passes = []
    pipe.extract(sample_scene(size=(64, 48)), resolution=64, ensemble=3, progress=lambda d, t: passes.append(t))
    assert passes == [1]  # CPU: every row in one pass, as before
    monkeypatch.setattr(pipeline_module, "auto_micro_batch", two_rows)
    passes.clear()
    pipe.extract([sample_scene(size=(64, 48))] * 2, resolution=64, ensemble=3, progress=lambda d, t: passes.append(t))
    assert passes[-1] == math.ceil(6 / 2)
    assert asked == [dict(rows=6, images=2, image_tokens=4 * 3, text_tokens=512, hidden_size=64, dtype=torch.float32,
                          layers=1)]
    passes.clear()
    pipe.extract(sample_scene(size=(64, 48)), resolution=64, ensemble=3, micro_batch=1,
                 progress=lambda d, t: passes.append(t))
    assert passes[-1] == 3 and len(asked) == 1  # a given micro_batch is used as it is
