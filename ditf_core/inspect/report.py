"""The inspector's JSON report (stable keys, documented in the README) and its one-screen text summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..recipe import EnsembleCapture
from ..wording import plural
from .analysis import adaln_comparison, channel_stats, gate_alignment, massive_summary, number, table1

REPORT_VERSION = 1


def layer_report(
    capture: EnsembleCapture,
    *,
    layer: int,
    ratio: float,
    weak_ratio: float,
    gate_k: int | None = None,
    block_kind: str | None = None,
) -> dict:
    """Everything the report says about one block's input (hidden [B, N, C] with that block's modulation)."""
    stats = channel_stats(capture.hidden)
    massive = massive_summary(stats, ratio)
    return {
        "layer": layer,
        "block_kind": block_kind,
        "grid": list(capture.grid),
        "tokens": int(capture.hidden.shape[-2]),
        "hidden_size": int(capture.hidden.shape[-1]),
        "map_median": number(stats.map_median),
        "massive": massive,
        "table1": table1(stats),
        "adaln": adaln_comparison(capture.hidden, capture.modulation, massive["channels"], ratio=ratio,
                                  weak_ratio=weak_ratio),
        "gate": gate_alignment(capture.modulation.gate, massive["channels"], k=gate_k, block=layer),
    }


def build_report(
    layers: Sequence[dict],
    *,
    model: Mapping | None,
    settings: Mapping,
    sweep: dict | None,
    figures: Sequence[str] = (),
) -> dict:
    """The whole report; ``channels`` / ``channels_text`` are the massive channels of the first listed layer (the
    extraction layer), the text in the form the Extract discard input takes ("13, 41", or "none")."""
    channels = list(layers[0]["massive"]["channels"]) if layers else []
    return {
        "report_version": REPORT_VERSION,
        "model": dict(model) if model is not None else None,
        "settings": dict(settings),
        "layers": list(layers),
        "sweep": sweep,
        "channels": channels,
        "channels_text": channels_text(channels),
        "figures": [f"{name}.png" for name in figures],
    }


def channels_text(channels: Sequence[int]) -> str:
    """[41, 13] -> "41, 13"; [] -> "none" (both accepted by ``discard`` of extract and the Extract node)."""
    return ", ".join(str(int(c)) for c in channels) or "none"


def summary_text(report: Mapping) -> str:
    """A few readable lines: per layer the massive channels with ratios, Table 1, AdaLN and gate results; the sweep."""
    lines = []
    model = report.get("model") or {}
    settings = report["settings"]
    lines.append(f"Massive-activation inspector: {model.get('name', model.get('class', 'model'))} "
                 f"({model.get('family', '?')}, {model.get('depth', '?')} blocks), t={settings.get('t')}, "
                 f"{_images(settings.get('images'))}, ensemble {settings.get('ensemble')}")
    for entry in report["layers"]:
        massive = entry["massive"]
        pairs = ", ".join(f"{c} ({r:,.1f}x)" for c, r in zip(massive["channels"], massive["ratios"]))
        lines.append(f"  block {entry['layer']} input: massive channels {pairs or 'none'} "
                     f"(rule: >= {massive['threshold']:g}x map median {entry['map_median']:.4g})")
        rows = "; ".join(f"#{row['rank']} ch {row['channel']}: {row['mean']:.4g} ± {row['std']:.4g}"
                         for row in entry["table1"]["rows"])
        lines.append(f"    Table 1 (|h| mean ± std over patches): {rows}; "
                     f"map median {entry['table1']['map_median']:.4g}")
        adaln = entry["adaln"]
        weak = adaln["weakly_massive"]
        lines.append(f"    AdaLN: max ratio {adaln['max_ratio_before']:,.1f}x -> {adaln['max_ratio_after']:,.1f}x "
                     f"(+discard {adaln['max_ratio_after_discard']:,.1f}x); "
                     f"weakly massive (>= {adaln['weak_ratio']:g}x) after AdaLN: {weak['channels'] or 'none'}")
        gate = entry["gate"]
        lines.append(f"    own gate of block {gate['block']}: top-{gate['k']} |gate| {gate['top_channels']}, "
                     f"overlap with massive {gate['overlap']}")
    sweep = report.get("sweep")
    if sweep:
        lines.append(f"  sweep over blocks {sweep['layers'][0]}..{sweep['layers'][-1]}: massive at blocks "
                     f"{sweep['massive_layers'] or 'none'}")
        writer = sweep.get("writer_gate")
        if writer:
            lines.append(f"    first massive at block {sweep['first_massive_layer']}: written by block "
                         f"{sweep['writer_block']}, whose top-{writer['k']} |gate| {writer['top_channels']} overlap "
                         f"{writer['overlap']} ({writer['overlap_fraction']:.0%})")
    lines.append(f"  channels for discard: {report['channels_text']}")
    return "\n".join(lines)


def _images(count) -> str:
    return plural(count, "image") if isinstance(count, int) else "? images"
