"""Find DiTF Layer on a DITF_MODEL: the core's layer finder (``ditf_core.tune``) fed by the model's own multi-layer
capture, whichever host it wraps. No ComfyUI import."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ditf_core.tune import DEFAULT_TS, LayerSearch, find_layer
from .model import DiTFModel


def parse_ts(text) -> list[float]:
    """The t widget: "0.1, 0.26, 0.5" -> [0.1, 0.26, 0.5]; empty -> the default grid. Values are checked by the
    finder (each strictly between 0 and 1)."""
    if not isinstance(text, str):
        raise TypeError(f"t_values must be text like '0.1, 0.26, 0.5', got {type(text).__name__}")
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"t_values must be numbers separated by commas, like '0.1, 0.26, 0.5'; got {text!r}") from None
    for value in values:
        if not 0.0 < value < 1.0:  # NaN fails this too
            raise ValueError(f"each t must lie strictly between 0 and 1, got {value} in t_values")
    return values or list(DEFAULT_TS)


def find_model_layer(model: DiTFModel, pixels: torch.Tensor, *, layers: Sequence[int] | None = None,
                     ts: Sequence[float] = DEFAULT_TS, warps: int = 4, seed: int = 0, mode: str = "ditf",
                     progress=None, **settings) -> LayerSearch:
    """Score ``layers`` (checked global block indices; default: every block) at each t on known warps of each image of ``pixels`` [B, 3, H, W].

    One capture per (image, t) - every layer from one early-exit pass per ensemble draw; settings: ensemble,
    resolution, prompt, conditioning (as ``DiTFModel.capture``). progress(done, total) after each capture.
    """
    blocks = list(range(model.depth)) if layers is None else list(layers)

    def extract(batch: torch.Tensor, t: float):
        return model.extract_layers(batch, layers=blocks, t=t, seed=seed, mode=mode, **settings)

    return find_layer(extract, list(pixels), ts=ts, warps=warps, seed=seed, progress=progress)
