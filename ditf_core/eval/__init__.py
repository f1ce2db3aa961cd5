"""Semantic-correspondence evaluation: benchmark readers, PCK, and a resumable harness.

``python -m ditf_core.eval --help`` runs it from the command line; in Python::

    pairs = read_spair("SPair-71k")
    result = evaluate(pairs, extractor, match="exact", cache_dir="cache", cache_settings={...})
    print(format_table(result["summary"]))

where ``extractor`` is any ``PIL.Image -> DiTFeatures`` callable.
"""

from .datasets import READERS, Pair, read_ap10k, read_pfpascal, read_spair
from .harness import cache_path, evaluate, evaluate_on_ranks, settings_digest, unique_images
from .pck import ALPHAS, PairScore, correct_points, format_table, summarize

__all__ = [
    "ALPHAS",
    "READERS",
    "Pair",
    "PairScore",
    "cache_path",
    "correct_points",
    "evaluate",
    "evaluate_on_ranks",
    "format_table",
    "read_ap10k",
    "read_pfpascal",
    "read_spair",
    "settings_digest",
    "summarize",
    "unique_images",
]
