"""The Massive-Activation Inspector in one call: captures (from any host) or a DiTFPipeline + images in; pictures,
a JSON report and the channels to discard out.

A host node stays thin: capture ``{layer: EnsembleCapture}`` with its own machinery (ideally every block, one
early-exit pass), call :func:`inspect_captures`, and show ``Inspection.figures`` / ``report`` / ``channels_text``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..images import as_image_batch
from ..outputs import save_image, write_json
from ..wording import plural
from ..recipe import EnsembleCapture
from . import plots as draw
from .analysis import MASSIVE_RATIO, WEAK_RATIO, channel_stats, check_ratio
from .report import build_report, layer_report, summary_text
from .sweep import DEFAULT_CACHE, LayerSweep, SweepCache, SweepKey, model_key, sweep_captures, sweep_key


@dataclass(frozen=True)
class Inspection:
    """report: the JSON-ready dict (README, "Inspector report"); figures: name -> picture, in display order (saved
    as ``<name>.png``); sweep: the per-layer sweep when one was made; key: its cache key, when known."""

    report: dict
    figures: dict[str, Image.Image] = field(default_factory=dict)
    sweep: LayerSweep | None = None
    key: SweepKey | None = None

    @property
    def channels(self) -> list[int]:
        """Massive channels at the first inspected layer, largest first."""
        return list(self.report["channels"])

    @property
    def channels_text(self) -> str:
        """The channels as the Extract discard input takes them: "41, 13", or "none"."""
        return self.report["channels_text"]

    def summary(self) -> str:
        return summary_text(self.report)

    def save(self, out: str | Path) -> list[Path]:
        """Write one PNG per figure, ``sweep.safetensors`` with a sweep, and ``report.json`` last, each atomically,
        into ``out``; returns the files in display order (report first)."""
        out = Path(out)
        written = [save_image(picture, out / f"{name}.png") for name, picture in self.figures.items()]
        if self.sweep is not None:
            written.append(self.sweep.save(out / "sweep.safetensors", self.key))
        return [write_json(out / "report.json", self.report), *written]


def inspect_captures(
    captures: Mapping[int, EnsembleCapture],
    *,
    layers: Sequence[int] | None = None,
    images=None,
    model: Mapping | None = None,
    settings: Mapping | None = None,
    ratio: float = MASSIVE_RATIO,
    weak_ratio: float = WEAK_RATIO,
    gate_k: int | None = None,
    min_fraction: float = 0.5,
    sweep: bool = True,
    plots: bool = True,
    block_kind: Callable[[int], str] | None = None,
) -> Inspection:
    """Inspect captured block inputs.

    captures: {global block index: EnsembleCapture(hidden [B, N, C], modulation (shift, scale, gate) [B, C] each,
        grid (h, w))}; all from one pass over the same B images. Capture every block for a full sweep.
    layers: blocks to analyse in detail (Table 1, AdaLN, gate, pictures); default ``settings["layer"]`` when
        captured, else the deepest captured block.
    images: the B input images (PIL list or tensor [B, 3, H, W] in [0, 1]; a ComfyUI IMAGE is
        ``image.movedim(-1, 1)``) for the PCA picture, or None.
    model / settings: copied into the report (fingerprint dict; a mapping or settings dataclass with t, ensemble,
        resolution, seed, prompt, guidance...).
    sweep: also sweep over all captured blocks (massive layers, stability, writer-block gate).
    block_kind: ``layer -> "double" | "single" | "joint"`` for the report (the family's ``block_kind``).
    Returns an :class:`Inspection`; its ``figures`` are PIL images of differing sizes.
    """
    if not isinstance(captures, Mapping) or not captures:
        raise ValueError("captures must be a non-empty {layer: EnsembleCapture} mapping; capture at least one block")
    ratio, weak_ratio = check_ratio(ratio, "ratio"), check_ratio(weak_ratio, "weak_ratio")
    settings = dict(vars(settings) if hasattr(settings, "__dataclass_fields__") else settings or {})
    layers = _detail_layers(captures, layers, settings.get("layer"))
    pixels = as_image_batch(images) if images is not None else None
    batch = int(next(iter(captures.values())).hidden.shape[0])
    if pixels is not None and pixels.shape[0] != batch:
        raise ValueError(f"images: got {plural(pixels.shape[0], 'image')} for captures of {batch}; pass the captured "
                         "images")
    kind = block_kind or (lambda layer: None)

    layer_sweep = sweep_captures(captures, ratio=ratio, min_fraction=min_fraction) if sweep else None
    entries = [layer_report(captures[layer], layer=layer, ratio=ratio, weak_ratio=weak_ratio, gate_k=gate_k,
                            block_kind=kind(layer)) for layer in layers]
    figures = _figures(captures, entries, layer_sweep, pixels, ratio, gate_k, model, settings) if plots else {}
    settings.update(layers=layers, captured_layers=sorted(captures), ratio=ratio, weak_ratio=weak_ratio,
                    gate_k=gate_k, min_fraction=min_fraction, images=batch)
    report = build_report(entries, model=model, settings=settings,
                          sweep=layer_sweep.to_dict(gate_k) if layer_sweep is not None else None, figures=list(figures))
    return Inspection(report=report, figures=figures, sweep=layer_sweep)


def inspect_pipeline(
    pipeline,
    images,
    *,
    layers: Sequence[int] | None = None,
    sweep: bool = True,
    cache: SweepCache | None = None,
    ratio: float = MASSIVE_RATIO,
    weak_ratio: float = WEAK_RATIO,
    gate_k: int | None = None,
    min_fraction: float = 0.5,
    plots: bool = True,
    micro_batch: int | None = None,
    progress=None,
    **settings,
) -> Inspection:
    """Inspect a :class:`~ditf_core.DiTFPipeline` on same-size images in ONE early-exit pass per micro-batch.

    With ``sweep`` every block is captured (the full-depth sweep, cached in ``cache``, default the process-wide
    cache, for :func:`massive_channels_for`); without it only ``layers``. settings: layer, t, ensemble,
    resolution, seed, prompt, guidance (the family defaults otherwise); layers default to the settings' layer.
    """
    resolved = pipeline.settings(**settings)
    layers = [resolved.layer] if layers is None else list(layers)
    started = time.perf_counter()
    run = pipeline.capture(images, layers=range(pipeline.depth) if sweep else layers, micro_batch=micro_batch,
                           progress=progress, **settings)
    capture_seconds = time.perf_counter() - started
    inspection = inspect_run(pipeline, run, layers=layers, sweep=sweep, cache=cache, ratio=ratio,
                             weak_ratio=weak_ratio, gate_k=gate_k, min_fraction=min_fraction, plots=plots)
    inspection.report["seconds"] = {"capture": round(capture_seconds, 3),
                                    "analysis_and_plots": round(time.perf_counter() - started - capture_seconds, 3)}
    return inspection


def inspect_run(
    pipeline,
    run,
    *,
    layers: Sequence[int] | None = None,
    sweep: bool = True,
    cache: SweepCache | None = None,
    ratio: float = MASSIVE_RATIO,
    weak_ratio: float = WEAK_RATIO,
    gate_k: int | None = None,
    min_fraction: float = 0.5,
    plots: bool = True,
) -> Inspection:
    """Inspect an existing :meth:`DiTFPipeline.capture` result (``run``); with ``sweep``, over all its layers
    (cached like :func:`inspect_pipeline`)."""
    model = {**pipeline.describe(), "name": pipeline.name, "key": model_key(pipeline.transformer)}
    report_settings = {name: getattr(run.settings, name) for name in ("t", "ensemble", "resolution", "seed", "prompt",
                                                                     "guidance")}
    inspection = inspect_captures(
        run.layers, layers=[run.settings.layer] if layers is None else layers, images=run.pixels, model=model,
        settings=report_settings, ratio=ratio, weak_ratio=weak_ratio, gate_k=gate_k, min_fraction=min_fraction,
        sweep=sweep, plots=plots, block_kind=lambda layer: pipeline.family.block_kind(pipeline.transformer, layer),
    )
    if inspection.sweep is None:
        return inspection
    key = sweep_key(model["key"], run.settings, ratio)
    (DEFAULT_CACHE if cache is None else cache).put(key, inspection.sweep)
    return replace(inspection, key=key)


def _detail_layers(captures: Mapping, layers, default) -> list[int]:
    if layers is None:
        layers = [default] if default in captures else [max(captures)]
    layers = list(layers)
    missing = [layer for layer in layers if layer not in captures]
    if not layers or missing:
        raise ValueError(f"layers {missing or layers} were not captured (captured blocks: {sorted(captures)}); "
                         "capture them too, or pick layers from the captured ones")
    return layers


def _figures(captures, entries, layer_sweep, pixels, ratio, gate_k, model, settings) -> dict[str, Image.Image]:
    name = (model or {}).get("name") or (model or {}).get("class") or "DiT"
    t = settings.get("t")
    suffix = f" — {name}" + (f", t={t}" if t is not None else "")
    writer = layer_sweep.writer_block if layer_sweep is not None else None
    figures: dict[str, Image.Image] = {}
    for entry in entries:
        layer = entry["layer"]
        capture = captures[layer]
        stats = channel_stats(capture.hidden)
        massive = entry["massive"]["channels"]
        figures[f"layer{layer}_magnitudes"] = draw.channel_magnitude_plot(
            stats, massive, ratio=ratio, title=f"Channel magnitudes entering block {layer}{suffix}")
        figures[f"layer{layer}_surface"] = draw.magnitude_surface_plot(
            capture.hidden[0], massive,
            title=f"|activation| by token and channel, block {layer} input, image 0{suffix}")
        gates = [(f"block {layer} (capture block) attention gate; overlap with massive: {entry['gate']['overlap']}",
                  capture.modulation.gate, entry["gate"]["top_channels"])]
        if writer is not None and writer != layer and writer in captures:
            alignment = layer_sweep.writer_gate(gate_k)
            gates.append((f"block {writer} (writes the massive values: first massive input is block {writer + 1}) "
                          f"attention gate; overlap: {alignment['overlap']}",
                          captures[writer].modulation.gate, alignment["top_channels"]))
        figures[f"layer{layer}_gate"] = draw.gate_alignment_plot(
            stats, massive, gates, title=f"Massive channels vs AdaLN-zero gate |gate|, block {layer}{suffix}")
        figures[f"layer{layer}_pca"] = draw.ablation_pca_plot(
            capture, massive, pixels, title=f"PCA of block {layer} features: the DiTF ablation{suffix}")
    if layer_sweep is not None and len(layer_sweep.layers) > 1:
        figures["sweep"] = draw.layer_sweep_plot(
            layer_sweep, split=(model or {}).get("split"),
            title=f"Layer sweep: massive at blocks {layer_sweep.massive_layers or 'none'}{suffix}")
    return figures
