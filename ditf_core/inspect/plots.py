"""Pictures of massive activations, each a PIL RGB image of a fixed size (about 1000 px wide).

matplotlib, the field's norm for these figures (the papers' own plots are matplotlib), drawn on an Agg canvas
through the object-oriented API: no GUI, no pyplot global state, safe to call from a server thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image

from ..families import Modulation
from ..recipe import EnsembleCapture, apply_recipe
from ..visualize import pca_rgb
from .analysis import ChannelStats, gate_magnitude
from .sweep import LayerSweep

DPI = 100
WIDTH_IN = 10.0  # 1000 px
MASSIVE_COLOUR = "#d62728"
GATE_COLOUR = "#ff7f0e"
BASE_COLOUR = "#4c72b0"


def channel_magnitude_plot(stats: ChannelStats, massive: Sequence[int], *, ratio: float, title: str) -> Image.Image:
    """Median |activation| per channel (log scale) with the massive channels marked; 1000x450 px."""
    fig, ax = _figure(4.5)
    channels = torch.arange(len(stats.median))
    floor = _log_floor(stats.median)
    ax.vlines(channels, floor, stats.median.clamp_min(floor), colors=BASE_COLOUR, linewidth=_line_width(len(channels)))
    for channel in massive:
        value = float(stats.median[channel])
        ax.vlines([channel], floor, value, colors=MASSIVE_COLOUR, linewidth=2.5)
        ax.annotate(f"{channel} ({float(stats.ratio[channel]):,.0f}x)", (channel, value), textcoords="offset points",
                    xytext=(4, 2), color=MASSIVE_COLOUR, fontsize=9)
    ax.axhline(max(stats.map_median, floor), color="0.3", linestyle="--", linewidth=1, label="map median")
    ax.axhline(max(ratio * stats.map_median, floor), color=MASSIVE_COLOUR, linestyle=":", linewidth=1,
               label=f"massive threshold ({ratio:g}x median)")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(channels) - 0.5)
    ax.set_xlabel("channel")
    ax.set_ylabel("median |activation| over image tokens")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    _margins(fig)
    return _render(fig)


def magnitude_surface_plot(
    hidden: torch.Tensor,
    massive: Sequence[int] = (),
    *,
    title: str,
    max_tokens: int = 128,
    max_channels: int = 256,
) -> Image.Image:
    """The token x channel |activation| surface of the paper's Figs. 2-3 for ONE image's tokens hidden [N, C];
    1000x700 px. Tokens are subsampled evenly and channels max-pooled into bins so that spikes survive."""
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3d projection)

    if hidden.ndim != 2:
        raise ValueError(f"hidden must be one image's tokens [N, C], got {list(hidden.shape)}")
    magnitude = hidden.detach().to("cpu", torch.float32).abs()
    tokens = torch.linspace(0, magnitude.shape[0] - 1, min(magnitude.shape[0], max_tokens)).round().long().unique()
    magnitude = magnitude[tokens]
    width = -(-magnitude.shape[1] // max_channels)  # channels per bin
    if width > 1:
        pad = width * -(-magnitude.shape[1] // width) - magnitude.shape[1]
        magnitude = torch.nn.functional.pad(magnitude, (0, pad)).reshape(len(tokens), -1, width).amax(-1)
    bins = torch.arange(magnitude.shape[1]) * width
    x, y = torch.meshgrid(tokens.float(), bins.float(), indexing="ij")
    fig = _new_figure(7.0)
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(x.numpy(), y.numpy(), magnitude.numpy(), cmap="viridis", rstride=1, cstride=1, linewidth=0,
                    antialiased=False)
    peak = float(magnitude.max())
    for channel in massive:
        column = magnitude[:, channel // width]
        ax.text(float(tokens[column.argmax()]), float(channel), float(column.max()) + 0.03 * peak, f"ch {channel}",
                color=MASSIVE_COLOUR, fontsize=9)
    ax.set_xlabel("image token")
    ax.set_ylabel("channel" + (f" (max over bins of {width})" if width > 1 else ""))
    ax.set_zlabel("|activation|")
    ax.set_title(title)
    ax.view_init(elev=25, azim=-60)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=0.93)
    return _render(fig)


def gate_alignment_plot(
    stats: ChannelStats,
    massive: Sequence[int],
    gates: Sequence[tuple[str, torch.Tensor, Sequence[int]]],
    *,
    title: str,
) -> Image.Image:
    """Channel ratio (top panel) above |gate| of one or more blocks (paper Fig. 4); 1000 px wide.

    gates: (panel label, gate [B, C] or [C], top-|gate| channels to highlight) per block.
    """
    fig = _new_figure(2.6 * (1 + len(gates)))
    axes = fig.subplots(1 + len(gates), 1, sharex=True, squeeze=False)[:, 0]
    channels = torch.arange(len(stats.ratio))
    finite = stats.ratio[torch.isfinite(stats.ratio)]
    ratio = torch.nan_to_num(stats.ratio, posinf=float(finite.max()) if len(finite) else 1.0)
    floor = _log_floor(ratio)
    width = _line_width(len(channels))
    massive, noun = list(massive), "massive channel" if len(massive) == 1 else "massive channels"
    axes[0].vlines(channels, floor, ratio.clamp_min(floor), colors=BASE_COLOUR, linewidth=width)
    if massive:
        axes[0].vlines(massive, floor, ratio[massive].clamp_min(floor), colors=MASSIVE_COLOUR, linewidth=2.5,
                       label=noun)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("channel ratio\n(median |h| / map median)")
    axes[0].set_title(title if massive else f"{title} (no massive channels)")
    for ax, (label, gate, top) in zip(axes[1:], gates):
        magnitude, top = gate_magnitude(gate), list(top)
        ax.vlines(channels, 0, magnitude, colors=BASE_COLOUR, linewidth=width)
        if top:
            ax.vlines(top, 0, magnitude[top], colors=GATE_COLOUR, linewidth=2.5, label=f"top-{len(top)} |gate|")
        if massive:
            ax.plot(massive, magnitude[massive], "v", color=MASSIVE_COLOUR, markersize=8, label=noun)
        ax.set_ylabel("|gate|")
        ax.set_title(label, fontsize=10)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # only what is drawn
            ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("channel")
    axes[-1].set_xlim(-0.5, len(channels) - 0.5)
    fig.align_ylabels(axes)
    _margins(fig, left=1.1, hspace=0.35)
    return _render(fig)


def ablation_pca_plot(
    capture: EnsembleCapture,
    discard: Sequence[int],
    images: torch.Tensor | None = None,
    *,
    title: str,
    max_images: int = 4,
) -> Image.Image:
    """PCA-RGB of the block's features: original vs +AdaLN vs +AdaLN+discard, beside the input (paper Fig. 5).

    capture: hidden [B, N, C] with its modulation and grid; images: [B, 3, H, W] in [0, 1] or None. One PCA per
    column over all shown images, so colours compare across images. 1000 px wide, one row per image.
    """
    h, w = capture.grid
    hidden = capture.hidden[:max_images]
    modulation = _rows(capture, len(hidden))
    variants = [
        ("original (raw block input)", hidden.float()),
        ("+AdaLN", apply_recipe(hidden, modulation)),
        (f"+AdaLN + discard {list(discard) or '(none found)'}", apply_recipe(hidden, modulation, discard=discard)),
    ]
    columns = []
    for label, tokens in variants:
        columns.append((label, _pca_rgb_tokens(tokens, (h, w))))
    if images is not None:
        columns.insert(0, ("input image", [image.float().clamp(0, 1) for image in images[: len(hidden)]]))
    rows, cols = len(hidden), len(columns)
    fig = _new_figure(WIDTH_IN / cols * rows * h / w + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    for col, (label, pictures) in enumerate(columns):
        for row, picture in enumerate(pictures):
            ax = axes[row, col]
            ax.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"image {row}")
    fig.suptitle(title)
    _margins(fig, left=0.35, right=0.05, bottom=0.05, top=0.75, hspace=0.3, wspace=0.03)
    return _render(fig)


def layer_sweep_plot(sweep: LayerSweep, *, title: str, split: int | None = None) -> Image.Image:
    """Layer x channel heatmap of log10(channel ratio), massive cells ringed; 1000 px wide, 400-900 px high."""
    ratio = torch.nan_to_num(sweep.ratios, posinf=1e12).clamp_min(1e-3)
    fig = _new_figure(max(4.0, min(9.0, 1.5 + 0.15 * len(sweep.layers))))
    ax = fig.subplots()
    picture = ax.imshow(ratio.log10().numpy(), aspect="auto", interpolation="nearest", cmap="magma",
                        extent=(-0.5, ratio.shape[1] - 0.5, len(sweep.layers) - 0.5, -0.5))
    for row, layer in enumerate(sweep.layers):
        channels = sweep.channels(layer)
        ax.plot(channels, [row] * len(channels), "o", markerfacecolor="none", markeredgecolor="#2ca02c", markersize=7)
    if split is not None and split in sweep.layers[1:]:  # double / single stream boundary
        ax.axhline(sweep.layers.index(split) - 0.5, color="white", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(sweep.layers)), [str(layer) for layer in sweep.layers],
                  fontsize=8 if len(sweep.layers) < 30 else 6)
    ax.set_xlabel(f"channel (rings: massive, >= {sweep.ratio:g}x the map median" +
                  ("; dashed line: double | single blocks)" if split in sweep.layers[1:] else ")"))
    ax.set_ylabel("block (its input)")
    ax.set_title(title)
    fig.colorbar(picture, ax=ax, label="log10(median |h| / map median)", fraction=0.04, pad=0.015)
    _margins(fig, right=0.9)
    return _render(fig)


def _pca_rgb_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor]:
    """tokens [B, N, C] -> B RGB maps [3, h, w] from one joint PCA (:func:`ditf_core.visualize.pca_rgb`)."""
    b, n, c = tokens.shape
    return pca_rgb(list(tokens.detach().transpose(1, 2).reshape(b, c, *grid)))


def _rows(capture: EnsembleCapture, count: int):
    modulation = capture.modulation
    return Modulation(shift=modulation.shift[:count], scale=modulation.scale[:count], gate=modulation.gate[:count])


def _new_figure(height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _margins(fig, *, left=0.8, right=0.2, bottom=0.6, top=0.45, hspace=0.2, wspace=0.2) -> None:
    """Fixed margins in inches (a layout engine costs ~0.2 s per figure; these plots have known furniture)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        hspace=hspace, wspace=wspace)


def _figure(height_in: float):
    fig = _new_figure(height_in)
    return fig, fig.subplots()


def _render(fig) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _log_floor(values: torch.Tensor) -> float:
    positive = values[values > 0]
    return float(positive.min()) / 2 if len(positive) else 1e-6


def _line_width(channels: int) -> float:
    return max(0.3, min(3.0, 600.0 / channels))
