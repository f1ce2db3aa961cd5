"""Settings of the massive-activation patches shared by every host: block lists, step windows, mask modes and the
defaults we chose where the papers are silent (documented in the README section "Massive activations at work").
"""

from __future__ import annotations

import math
import re

# Defaults (our choices; neither paper publishes them):
DEFAULT_TOP_K = 12  # the choice: a few channels, well above the 2-4 that carry Flux's largest spikes
DEFAULT_BLOCKS = "all"  # every block: MAs are re-created block after block, transporting a few leaves others to undo it
DEFAULT_MASK = "source"  # transport the source's salient region (its K-means foreground), the paper's M = p m^T
DEFAULT_DG_WEIGHT = 1.0  # one unit of (D(c) - D_m(c)), the scale PAG / SLG users start from is 3 but that term is
#                          a far larger perturbation (MAs zeroed), so we start at 1

MASK_MODES = ("source", "target", "union", "mask", "none")
MASK_HELP = {
    "source": "the source's MA foreground (K-means on its MA channels)",
    "target": "the target's MA foreground",
    "union": "either foreground",
    "mask": "the MASK input, resized to the token grid",
    "none": "every token (channel mask only)",
}


def parse_blocks(text, depth: int, split: int | None = None, name: str = "blocks") -> list[int]:
    """Global block indices from text: ``all``, ``none``/empty, or numbers and ranges like ``0-4, 7``.

    depth: number of blocks; split: first single-stream block (for the error message). Returns sorted unique
    indices; an index outside 0..depth-1 is an error naming the input and the valid range.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be text like 'all' or '0-4, 7', got {type(text).__name__}")
    keyword = text.strip().lower()
    if keyword == "all":
        return list(range(depth))
    if keyword in ("", "none"):
        return []
    blocks: set[int] = set()
    for part in filter(None, re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", keyword))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(f"{name}: cannot read {part!r}; write 'all' or block numbers and ranges like '0-4, 7'")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"{name}: the range {part!r} runs backwards; write it low-high")
        blocks.update(range(low, high + 1))
    unknown = sorted(b for b in blocks if b >= depth)
    if unknown:
        layout = f" ({split} double + {depth - split} single blocks)" if split is not None and split < depth else ""
        raise ValueError(f"{name}: this model has no block {unknown[0]}; use 0..{depth - 1}{layout} or 'all'")
    return sorted(blocks)


def check_window(start_percent, end_percent) -> tuple[float, float]:
    """(start, end) sampling percents in [0, 1] with start <= end, or an error naming the input."""
    values = []
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
        if not math.isfinite(float(value)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
        values.append(float(value))
    if values[0] > values[1]:
        raise ValueError(f"start_percent ({values[0]}) must not be after end_percent ({values[1]})")
    return values[0], values[1]


def check_mask_mode(mode) -> str:
    if mode not in MASK_MODES:
        raise ValueError(f"mask must be one of {', '.join(MASK_MODES)}; got {mode!r}")
    return mode
