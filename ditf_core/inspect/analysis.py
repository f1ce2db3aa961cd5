"""Massive-activation statistics of captured block inputs: tensors in, plain numbers out, no model needed.

Everything here takes what a capture produces (the ensemble-averaged raw block input ``hidden`` [B, N, C] and
the block's AdaLN modulation (shift, scale, gate), each [B, C]), so the diffusers host and the ComfyUI host share
it. Conventions (design §2):

* magnitude = |activation|; a channel's magnitude is its median |activation| over the image tokens of all images;
* a channel's ratio is its magnitude over the median |activation| of the whole map (all tokens, all channels);
* massive: ratio >= ``ratio`` (default 100); weakly massive after AdaLN: ratio >= ``weak_ratio`` (default 10).
  Why 10: clean random DiT maps peak at ratios of ~4-6 (design §5), so 10x stands clear of noise while sitting an
  order of magnitude under the massive criterion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..families import Modulation
from ..recipe import apply_recipe, check_channels

MASSIVE_RATIO = 100.0
WEAK_RATIO = 10.0
TABLE1_RANKS = (1, 2, 10, 20)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel magnitude statistics of a map, over all its tokens (images pooled).

    median, mean, std: [C] median / mean / population std (ddof 0) of |activation| per channel;
    map_median: median |activation| of the whole map; ratio: [C] median / map_median (inf where the map
    median is 0 and the channel's is not, 0 where both are); order: [C] channels by median, largest first.
    """

    median: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    map_median: float
    ratio: torch.Tensor
    order: torch.Tensor

    def massive(self, ratio: float = MASSIVE_RATIO) -> list[int]:
        """Channels with ratio >= ``ratio`` (and a positive median), largest first; same rule as
        :func:`ditf_core.find_massive_channels`."""
        ratio = check_ratio(ratio, "ratio")
        hits = (self.median >= ratio * self.map_median) & (self.median > 0)
        return [int(c) for c in self.order if hits[c]]


def channel_stats(hidden: torch.Tensor) -> ChannelStats:
    """:class:`ChannelStats` of hidden [..., N, C] (leading dimensions are pooled as tokens).

    Computed on the tensor's own device (a GPU capture stays there); only the [C] results come to the CPU.
    Medians follow torch: for an even count, the lower of the two middle values.
    """
    magnitude = _magnitudes(hidden)
    median, map_median, ratio = _median_ratio(magnitude)
    return ChannelStats(
        median=median,
        mean=magnitude.mean(dim=0).cpu(),
        std=magnitude.std(dim=0, correction=0).cpu(),
        map_median=map_median,
        ratio=ratio,
        order=torch.argsort(median, descending=True, stable=True),
    )


def channel_ratios(hidden: torch.Tensor, ratio: float = MASSIVE_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """(channel ratio [C], massive mask [C]) of hidden [..., N, C]: the cheap part of :func:`channel_stats` that
    the sweep needs, with the exact rule of :func:`ditf_core.find_massive_channels`."""
    median, map_median, channel_ratio = _median_ratio(_magnitudes(hidden))
    return channel_ratio, (median >= ratio * map_median) & (median > 0)


def massive_summary(stats: ChannelStats, ratio: float = MASSIVE_RATIO) -> dict:
    """{"channels": [...], "ratios": [...], "threshold": ratio} with channels largest first."""
    channels = stats.massive(ratio)
    return {"channels": channels, "ratios": [number(stats.ratio[c]) for c in channels], "threshold": float(ratio)}


def table1(stats: ChannelStats, ranks: Sequence[int] = TABLE1_RANKS) -> dict:
    """The paper's Table 1 for one map: channels ranked by magnitude (median |activation|, largest = rank 1);
    for each requested rank, mean ± std over image patches of that channel's |activation|; and the map median.

    Ranks beyond the number of channels are left out. Returns {"map_median": m, "rows": [{"rank", "channel",
    "mean", "std", "median", "ratio"}, ...]}.
    """
    rows = []
    for rank in ranks:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"Table 1 ranks must be positive integers (1 = largest channel), got {rank!r}")
        if rank > len(stats.order):
            continue
        channel = int(stats.order[rank - 1])
        rows.append({
            "rank": rank,
            "channel": channel,
            "mean": number(stats.mean[channel]),
            "std": number(stats.std[channel]),
            "median": number(stats.median[channel]),
            "ratio": number(stats.ratio[channel]),
        })
    return {"map_median": number(stats.map_median), "rows": rows}


def gate_alignment(
    gate: torch.Tensor, massive: Sequence[int], *, k: int | None = None, block: int | None = None
) -> dict:
    """How the top-|gate| channels of a block's AdaLN-zero gate line up with the massive channels (paper Fig. 4).

    gate: [B, C] or [C] attention-branch gate of the block; |gate| is averaged over the batch.
    massive: the massive channels to compare with. k: how many top-|gate| channels to take (default: as many
    as there are massive channels). Returns {"block", "k", "top_channels", "top_abs_gate", "overlap",
    "overlap_fraction" (|overlap| / k, None when k is 0), "massive_gate_ranks" (1-based rank of each massive
    channel in the |gate| order), "median_abs_gate"}.
    """
    magnitude = gate_magnitude(gate)
    massive = check_channels(list(massive), magnitude.shape[0])
    if k is None:
        k = len(massive)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= magnitude.shape[0]:
        raise ValueError(
            f"gate_k must be an integer in 0..{magnitude.shape[0]} (top |gate| channels to compare), got {k!r}"
        )
    order = torch.argsort(magnitude, descending=True, stable=True)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(1, len(order) + 1)
    top = [int(c) for c in order[:k]]
    overlap = [c for c in top if c in set(massive)]
    return {
        "block": block,
        "k": k,
        "top_channels": top,
        "top_abs_gate": [number(magnitude[c]) for c in top],
        "overlap": overlap,
        "overlap_fraction": number(len(overlap) / k) if k else None,
        "massive_gate_ranks": [int(rank_of[c]) for c in massive],
        "median_abs_gate": number(magnitude.median()),
    }


def adaln_comparison(
    hidden: torch.Tensor,
    modulation: Modulation,
    massive: Sequence[int],
    *,
    ratio: float = MASSIVE_RATIO,
    weak_ratio: float = WEAK_RATIO,
) -> dict:
    """Channel ratios before and after AdaLN (``(1 + scale) * LN(h) + shift``), and after AdaLN + discard.

    hidden: [B, N, C] raw block input; massive: the channels massive before AdaLN (discarded in the third map).
    Returns {"massive_channels", "ratios_before", "ratios_after" (of those channels), "max_ratio_before",
    "max_ratio_after", "max_ratio_after_discard", "massive_after" (channels still >= ratio after AdaLN),
    "weak_ratio", "weakly_massive": {"channels", "ratios"} (channels >= weak_ratio after AdaLN, largest first)}.
    """
    ratio = check_ratio(ratio, "ratio")
    weak_ratio = check_ratio(weak_ratio, "weak_ratio")
    massive = list(massive)
    before = channel_stats(hidden)
    after = channel_stats(apply_recipe(hidden, modulation))
    after_discard = channel_stats(apply_recipe(hidden, modulation, discard=massive))
    weak = after.massive(weak_ratio)
    return {
        "massive_channels": massive,
        "ratios_before": [number(before.ratio[c]) for c in massive],
        "ratios_after": [number(after.ratio[c]) for c in massive],
        "max_ratio_before": number(before.ratio.max()),
        "max_ratio_after": number(after.ratio.max()),
        "max_ratio_after_discard": number(after_discard.ratio.max()),
        "massive_after": after.massive(ratio),
        "weak_ratio": float(weak_ratio),
        "weakly_massive": {"channels": weak, "ratios": [number(after.ratio[c]) for c in weak]},
    }


def massive_frequency(hidden: torch.Tensor, ratio: float = MASSIVE_RATIO) -> torch.Tensor:
    """[C] fraction of the images of hidden [B, N, C] in which each channel is massive on its own."""
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, N, C] (images, tokens, channels), got {list(hidden.shape)}")
    counts = torch.zeros(hidden.shape[-1])
    for image in hidden:
        counts += channel_ratios(image, ratio)[1].float()
    return counts / hidden.shape[0]


def gate_magnitude(gate: torch.Tensor) -> torch.Tensor:
    """|gate| [C] averaged over the batch, for gate [B, C] or [C]."""
    if not isinstance(gate, torch.Tensor):
        raise TypeError(f"gate must be a torch.Tensor [B, C] (modulation.gate), got {type(gate).__name__}")
    if gate.ndim not in (1, 2):
        raise ValueError(f"gate must be [B, C] or [C], got shape {list(gate.shape)}")
    magnitude = gate.detach().to("cpu", torch.float32).abs()
    return magnitude if magnitude.ndim == 1 else magnitude.mean(dim=0)


def check_ratio(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a positive finite number (e.g. {MASSIVE_RATIO:g} or {WEAK_RATIO:g}), got {value!r}"
        )
    return float(value)


def number(value) -> float | None:
    """A JSON-friendly float, 6 significant digits (None for inf/nan)."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _magnitudes(hidden: torch.Tensor) -> torch.Tensor:
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor [B, N, C], got {type(hidden).__name__}")
    if hidden.ndim < 2 or hidden.shape[-1] == 0 or hidden.numel() == 0:
        raise ValueError(f"hidden must be [..., N, C] with tokens and channels, got shape {list(hidden.shape)}")
    return hidden.detach().abs().to(torch.float32).reshape(-1, hidden.shape[-1])


def _median_ratio(magnitude: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(median [C] on the CPU, map median, ratio [C] on the CPU) of magnitudes [M, C]."""
    median = magnitude.median(dim=0).values.cpu()
    map_median = float(magnitude.median())
    if map_median > 0:
        return median, map_median, median / map_median
    return median, map_median, torch.where(median > 0, torch.full_like(median, math.inf), torch.zeros_like(median))

