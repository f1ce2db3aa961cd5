"""What the layer finder returns: a PCK table over (t, block), the best setting, a plot and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from PIL import Image

ALPHAS = (0.05, 0.10)
RANK_ALPHA = 1  # rank by PCK@0.10, break ties by PCK@0.05


@dataclass(frozen=True, eq=False)  # a tensor inside: compare field by field
class LayerSearch:
    """PCK of every scored block at every t.

    layers: global block indices (L, ascending); ts: the t grid (T, ascending); pck: [A, T, L] fractions of
    correct matches at ``ALPHAS``; points: ground-truth matches scored per cell; images, warps: the test set.
    """

    layers: tuple[int, ...]
    ts: tuple[float, ...]
    pck: torch.Tensor
    points: int
    images: int
    warps: int

    @cached_property
    def best(self) -> tuple[int, float]:
        """(layer, t) with the highest PCK@0.10 (ties: higher PCK@0.05, then smaller t, then shallower block)."""
        primary, secondary = self.pck[RANK_ALPHA].flatten(), self.pck[0].flatten()
        tied = primary == primary.max()
        flat = int(torch.argmax(torch.where(tied, secondary, -1.0)))  # first maximum: smaller t, shallower block
        row, column = divmod(flat, len(self.layers))
        return self.layers[column], self.ts[row]

    @property
    def best_layer(self) -> int:
        return self.best[0]

    @property
    def best_t(self) -> float:
        return self.best[1]

    def score(self, layer: int, t: float, alpha: float = 0.10) -> float:
        return float(self.pck[ALPHAS.index(alpha), self.ts.index(t), self.layers.index(layer)])

    def table(self) -> str:
        """Plain-text table: one row per block, PCK@0.05 / PCK@0.10 per t, in percent; the best row marked."""
        header = "block | " + " | ".join(f"t={t:g}: @0.05  @0.10" for t in self.ts)
        lines = [header, "-" * len(header)]
        for column, layer in enumerate(self.layers):
            cells = " | ".join(
                f"{100 * float(self.pck[0, row, column]):9.1f} {100 * float(self.pck[1, row, column]):6.1f}"
                for row in range(len(self.ts))
            )
            mark = "  <- best" if layer == self.best_layer else ""
            lines.append(f"{layer:5d} | {cells}{mark}")
        lines.append(f"best: layer {self.best_layer}, t {self.best_t:g} "
                     f"(PCK@0.10 {100 * self.score(*self.best):.1f}%, {self.points} matches per cell, "
                     f"{self.images} image(s) x {self.warps} warps)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "best": {"layer": self.best_layer, "t": self.best_t,
                     "pck": {str(alpha): self.score(self.best_layer, self.best_t, alpha) for alpha in ALPHAS}},
            "layers": list(self.layers),
            "ts": list(self.ts),
            "pck": {str(alpha): self.pck[a].tolist() for a, alpha in enumerate(ALPHAS)},
            "points": self.points,
            "images": self.images,
            "warps": self.warps,
        }

    def plot(self, title: str = "Find DiTF Layer: PCK on known warps of your images") -> Image.Image:
        """PCK@0.10 and @0.05 over block x t (one heatmap each, the best cell ringed); about 1000 px wide."""
        from ..inspect.plots import new_figure, render_figure, set_margins

        fig = new_figure(max(3.0, 1.4 + 0.45 * len(self.ts)) * 2)
        for index, a in enumerate((RANK_ALPHA, 0)):
            ax = fig.add_subplot(2, 1, index + 1)
            picture = ax.imshow(self.pck[a].numpy() * 100, aspect="auto", interpolation="nearest", cmap="viridis",
                                vmin=0, vmax=100)
            best_row, best_column = self.ts.index(self.best_t), self.layers.index(self.best_layer)
            ax.plot([best_column], [best_row], "o", markerfacecolor="none", markeredgecolor="red", markersize=12)
            step = max(1, len(self.layers) // 30)
            ax.set_xticks(range(0, len(self.layers), step), [str(x) for x in self.layers[::step]], fontsize=7)
            ax.set_yticks(range(len(self.ts)), [f"{t:g}" for t in self.ts])
            ax.set_ylabel("t")
            ax.set_title(f"PCK@{ALPHAS[a]:g} (%)" + (f" - {title}" if index == 0 else ""), fontsize=10)
            fig.colorbar(picture, ax=ax, fraction=0.03, pad=0.01)
        ax.set_xlabel(f"block (best: layer {self.best_layer}, t {self.best_t:g}, ringed)")
        set_margins(fig, right=0.4, hspace=0.45)
        return render_figure(fig)
