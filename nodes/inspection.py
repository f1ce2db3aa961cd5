"""The Massive-Activation Inspector on a DITF_MODEL: one capture (every block for the sweep), the core's analysis,
the sweep cached for later ``massive_channels_for`` look-ups, and the figures as one IMAGE batch. No ComfyUI import.
"""

from __future__ import annotations

import time

import torch

from ..ditf_core.capture import check_layers
from ..ditf_core.inspect import DEFAULT_CACHE, Inspection, SweepCache, inspect_captures, sweep_key
from ..ditf_core.inspect.analysis import MASSIVE_RATIO
from .model import DiTFModel

REPORT_SETTINGS = ("t", "ensemble", "resolution", "seed", "prompt", "guidance")


def parse_layers(text, model: DiTFModel | None = None) -> list[int]:
    """The layers widget: "" (or -1) = the family's default block, "28", "20, 28" -> sorted global block indices
    checked against ``model``'s depth (without a model: only the syntax, -1 kept)."""
    if not isinstance(text, str):
        raise TypeError(f"layers must be text like '28' or '20, 28', got {type(text).__name__}")
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    try:
        chosen = [int(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"layers must be block numbers separated by commas, like '28' or '20, 28' (empty: the family default); "
            f"got {text!r}"
        ) from None
    if model is None:
        return chosen
    default = model.defaults.layer
    chosen = [default if layer == -1 else layer for layer in chosen] or [default]
    return check_layers(model.host.structure, model.family, chosen, "layers")


def inspect_model(
    model: DiTFModel,
    pixels: torch.Tensor,
    *,
    layers: list[int],
    sweep: bool = True,
    ratio: float = MASSIVE_RATIO,
    cache: SweepCache | None = None,
    progress=None,
    **settings,
) -> Inspection:
    """Inspect ``model`` on ``pixels`` [B, 3, H, W] (one batch, one size) at ``layers`` (global block indices).

    One early-exit pass per ensemble draw captures every block (``sweep``) or only ``layers``; settings: t, ensemble,
    resolution, seed, prompt, conditioning (as ``DiTFModel.capture``). With a sweep, it is stored in ``cache``
    (default: the process-wide ``ditf_core.inspect.DEFAULT_CACHE``) under the host's model key.
    """
    started = time.perf_counter()
    captured = range(model.depth) if sweep else layers
    run = model.capture(pixels, layers=list(captured), ratio=ratio, progress=progress, **settings)
    capture_seconds = time.perf_counter() - started
    key = model.model_key() if sweep else None
    described = {**model.host.describe(), "host": model.host.kind, **({"key": key} if key else {})}
    report_settings = {name: getattr(run.settings, name) for name in REPORT_SETTINGS}
    report_settings["conditioning"] = run.conditioning
    structure, family = model.host.structure, model.family
    inspection = inspect_captures(
        run.layers, layers=layers, images=pixels, model=described, settings=report_settings, ratio=ratio,
        sweep=sweep, block_kind=lambda layer: family.block_kind(structure, layer),
    )
    inspection.report["seconds"] = {"capture": round(capture_seconds, 3),
                                    "analysis_and_plots": round(time.perf_counter() - started - capture_seconds, 3)}
    if inspection.sweep is None:
        return inspection
    cache_key = sweep_key(key, run.settings, ratio)
    (DEFAULT_CACHE if cache is None else cache).put(cache_key, inspection.sweep)
    return Inspection(inspection.report, inspection.figures, inspection.sweep, cache_key)
