"""Run keypoint transfer over benchmark pairs and score it with PCK, with a resumable feature cache.

The extractor is any callable ``PIL.Image -> DiTFeatures`` (batch of one, mapping for that image), so the
harness runs without a model; the CLI wires it to :class:`ditf_core.pipeline.DiTFPipeline`.

Feature cache: the feature store of :mod:`ditf_core.dataset.store` (one safetensors file per image under
``<cache_dir>/<settings digest>/``, written atomically), so an interrupted run leaves no half-written entry and a
rerun extracts only what is missing. Under torchrun, :func:`evaluate_on_ranks` extracts the missing images on every
rank first (each unique image once) and scores on rank 0 from the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from ..dataset.ranks import Ranks
from ..dataset.runner import extract_on_ranks, unique_paths
from ..dataset.store import Extractor, cache_path, extract_into, read_cached, settings_digest
from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..matching import match_points
from .datasets import Pair
from .pck import ALPHAS, PairScore, correct_points, summarize

ProgressFn = Callable[[int, int], None]
__all__ = ["cache_path", "evaluate", "evaluate_on_ranks", "settings_digest", "unique_images"]


def evaluate(
    pairs: Sequence[Pair],
    extractor: Extractor,
    *,
    match: str = "exact",
    alphas=ALPHAS,
    cache_dir: str | Path | None = None,
    cache_settings: dict | None = None,
    keep_predictions: bool = False,
    progress: ProgressFn | None = None,
    memory_items: int = 16,
) -> dict:
    """Match every pair's source keypoints into its target image and score them.

    match: "exact" (the paper protocol) or "fast" (see :func:`ditf_core.matching.match_points`).
    cache_dir / cache_settings: where to keep features and the extraction settings that key them (required
        together). Returns {"summary": ..., "pairs": [per-pair records], "features": {"extracted", "cached"}}.
    """
    if cache_dir is not None and not cache_settings:
        raise DiTFInputError("a feature cache needs cache_settings (the extraction settings that key it)")
    features = _FeatureSource(extractor, cache_dir, cache_settings, memory_items)
    scores, records = [], []
    for done, pair in enumerate(pairs, start=1):
        if pair.source_points.shape[0] == 0:
            records.append({"name": pair.name, "category": pair.category, "points": 0, "skipped": "no keypoints"})
        else:
            score, record = _score_pair(pair, features, match, alphas, keep_predictions)
            scores.append(score)
            records.append(record)
        if progress is not None:
            progress(done, len(pairs))
    return {
        "summary": summarize(scores, alphas),
        "pairs": records,
        "features": {"extracted": features.extracted, "cached": features.cached},
    }


def evaluate_on_ranks(
    pairs: Sequence[Pair],
    extractor: Extractor,
    *,
    ranks: Ranks,
    cache_dir: str | Path | None,
    cache_settings: dict | None,
    show_progress: bool = True,
    **options,
) -> dict | None:
    """:func:`evaluate` for a torchrun launch: every rank extracts its share of the images the cache lacks (each
    image once, whatever the number of pairs it is in), then rank 0 scores from the cache and returns the result,
    with the extraction run's summary under "extraction"; the other ranks return None.

    options: as :func:`evaluate` (match, alphas, keep_predictions, progress, memory_items).
    """
    if cache_dir is None or not cache_settings:
        raise DiTFInputError("ranks share their features through the cache: give a cache folder and its settings "
                             "(drop --no-cache)")
    run = extract_on_ranks(unique_images(pairs), extractor, cache_dir, cache_settings, ranks=ranks,
                           show_progress=show_progress)
    if not ranks.main:
        return None
    result = evaluate(pairs, extractor, cache_dir=cache_dir, cache_settings=cache_settings, **options)
    result["features"] = {"extracted": run["extracted"] + result["features"]["extracted"],
                          "cached": run["stored_before"]}
    return {**result, "extraction": run}


def unique_images(pairs: Sequence[Pair]) -> list[Path]:
    """The images :func:`evaluate` reads (pairs without keypoints need none), each once, in first-use order."""
    return unique_paths(path for pair in pairs if pair.source_points.shape[0]
                        for path in (pair.source_image, pair.target_image))


def _score_pair(pair: Pair, features, match: str, alphas, keep_predictions: bool) -> tuple[PairScore, dict]:
    source, target = features.get(pair.source_image), features.get(pair.target_image)
    width, height = source.mapping.image_size
    # annotations can sit on (or a rounding error past) the border; the matcher wants points inside
    points = pair.source_points.clone()
    points[:, 0] = points[:, 0].clamp(0, width - 1)
    points[:, 1] = points[:, 1].clamp(0, height - 1)
    predicted = match_points(source, target, points, mode=match).points[0]
    size = pair.threshold_size if pair.threshold_size is not None else max(target.mapping.image_size)
    correct = correct_points(predicted, pair.target_points, size, alphas)
    record = {
        "name": pair.name,
        "category": pair.category,
        "points": int(correct.shape[1]),
        "threshold_size": float(size),
        "correct": {f"{float(a):g}": int(c) for a, c in zip(alphas, correct.sum(dim=1))},
    }
    if keep_predictions:
        record["predicted"] = predicted.tolist()
    return PairScore(pair.name, pair.category, correct), record


class _FeatureSource:
    """Features per image path: recent ones in memory, then the disk cache, then the extractor."""

    def __init__(self, extractor, cache_dir, settings, memory_items: int):
        self.extractor, self.cache_dir, self.settings = extractor, cache_dir, settings
        self.memory: OrderedDict[Path, DiTFeatures] = OrderedDict()
        self.memory_items = max(2, memory_items)
        self.extracted = self.cached = 0

    def get(self, image_path: Path) -> DiTFeatures:
        image_path = Path(image_path)
        if image_path in self.memory:
            self.memory.move_to_end(image_path)
            return self.memory[image_path]
        features = self._from_disk(image_path) or self._extract(image_path)
        self.memory[image_path] = features
        while len(self.memory) > self.memory_items:
            self.memory.popitem(last=False)
        return features

    def _from_disk(self, image_path: Path) -> DiTFeatures | None:
        if self.cache_dir is None:
            return None
        features = read_cached(self.cache_dir, self.settings, image_path)
        self.cached += features is not None
        return features

    def _extract(self, image_path: Path) -> DiTFeatures:
        features = extract_into(self.cache_dir, self.settings, image_path, self.extractor)
        self.extracted += 1
        return features
