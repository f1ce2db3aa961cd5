"""PCK (percentage of correct keypoints): per point and per image, per category and overall.

A predicted point is correct at alpha when its distance to the ground truth is at most ``alpha * size``
(``<=`` as in DiTF's eval_spair.py), where size is the target box's max side (SPair-71k, AP-10K) or the target
image's max side (PF-PASCAL). Per-point PCK pools all points; per-image PCK averages each pair's fraction.
"all" pools every pair; "mean" averages the categories (both are reported by the DiTF script).
Values are fractions in [0, 1]; the table prints percentages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from ..errors import DiTFInputError

ALPHAS = (0.01, 0.05, 0.10)


@dataclass(frozen=True)
class PairScore:
    """Correctness of one pair's K points at each alpha: correct [A, K] bool."""

    name: str
    category: str
    correct: torch.Tensor


def correct_points(
    predicted: torch.Tensor, truth: torch.Tensor, size: float, alphas=ALPHAS
) -> torch.Tensor:
    """predicted, truth: [K, 2] pixels; size: the length alpha multiplies -> bool [len(alphas), K]."""
    if predicted.shape != truth.shape or predicted.ndim != 2 or predicted.shape[-1] != 2:
        raise DiTFInputError(f"predicted {list(predicted.shape)} and truth {list(truth.shape)} must both be [K, 2]")
    if not size > 0:
        raise DiTFInputError(f"the PCK size (box or image max side) must be positive, got {size!r}")
    distance = (predicted.double() - truth.double()).norm(dim=-1)
    limits = torch.tensor([float(a) * float(size) for a in alphas], dtype=torch.float64)
    return distance[None, :] <= limits[:, None]


def summarize(scores: list[PairScore], alphas=ALPHAS) -> dict:
    """Per-category, "all" and "mean" per-point and per-image PCK of scored pairs (pairs with no points are
    left out)."""
    scores = [s for s in scores if s.correct.shape[-1] > 0]
    by_category: dict[str, list[PairScore]] = defaultdict(list)
    for score in scores:
        by_category[score.category].append(score)
    categories = {name: _block(items, alphas) for name, items in sorted(by_category.items())}
    summary = {"alphas": [float(a) for a in alphas], "categories": categories, "all": _block(scores, alphas)}
    summary["mean"] = {
        kind: {key: _mean([c[kind][key] for c in categories.values()]) for key in _keys(alphas)}
        for kind in ("per_point", "per_image")
    }
    return summary


def format_table(summary: dict) -> str:
    """A fixed-width text table of a :func:`summarize` result, in percent."""
    keys = _keys(summary["alphas"])
    head = " ".join(f"{'@' + k:>7}" for k in keys)
    lines = [f"{'category':<20} {'pairs':>6} {'points':>7} | per-point {head} | per-image {head}"]
    rows = [(name, block) for name, block in summary["categories"].items()] + [("all", summary["all"])]
    for name, block in rows:
        lines.append(
            f"{name[:20]:<20} {block['pairs']:>6} {block['points']:>7} | {'':9} {_cells(block['per_point'], keys)} "
            f"| {'':9} {_cells(block['per_image'], keys)}"
        )
    mean = summary["mean"]
    lines.append(f"{'mean of categories':<20} {'':>6} {'':>7} | {'':9} {_cells(mean['per_point'], keys)} "
                 f"| {'':9} {_cells(mean['per_image'], keys)}")
    return "\n".join(lines)


def _block(scores: list[PairScore], alphas) -> dict:
    keys = _keys(alphas)
    if not scores:
        return {"pairs": 0, "points": 0, "per_point": dict.fromkeys(keys), "per_image": dict.fromkeys(keys)}
    correct = torch.cat([s.correct for s in scores], dim=1).double()  # [A, total points]
    per_pair = torch.stack([s.correct.double().mean(dim=1) for s in scores], dim=1)  # [A, pairs]
    return {
        "pairs": len(scores),
        "points": int(correct.shape[1]),
        "per_point": {k: float(v) for k, v in zip(keys, correct.mean(dim=1))},
        "per_image": {k: float(v) for k, v in zip(keys, per_pair.mean(dim=1))},
    }


def _keys(alphas) -> list[str]:
    return [f"{float(a):g}" for a in alphas]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _cells(values: dict, keys) -> str:
    return " ".join(f"{'-':>7}" if values[k] is None else f"{100 * values[k]:>7.2f}" for k in keys)
