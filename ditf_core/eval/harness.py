"""Run keypoint transfer over benchmark pairs and score it with PCK, with a resumable feature cache.

The extractor is any callable ``PIL.Image -> DiTFeatures`` (batch of one, mapping for that image), so the
harness runs without a model; the CLI wires it to :class:`ditf_core.pipeline.DiTFPipeline`.

Feature cache: one safetensors file per image (:meth:`DiTFeatures.save`) under
``<cache_dir>/<settings digest>/<path digest>-<stem>.safetensors``, where the settings digest hashes the
extraction settings (model, layer, t, ...) and the path digest the image's resolved path. Files are written
atomically, so an interrupted run leaves no half-written entry and a rerun extracts only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..image_files import open_image
from ..outputs import write_json
from ..matching import match_points
from .datasets import Pair
from .pck import ALPHAS, PairScore, correct_points, summarize

Extractor = Callable[[Image.Image], DiTFeatures]
ProgressFn = Callable[[int, int], None]
CACHE_FORMAT = 1


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


def settings_digest(settings: dict) -> str:
    """A stable hash of extraction settings (JSON, sorted keys)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_path(cache_dir: str | Path, settings: dict, image_path: str | Path) -> Path:
    """Where the features of ``image_path`` extracted with ``settings`` live in ``cache_dir``."""
    image_path = Path(image_path)
    key = hashlib.sha256(str(image_path.resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / settings_digest(settings)[:16] / f"{key}-{image_path.stem}.safetensors"


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
        path = cache_path(self.cache_dir, self.settings, image_path)
        if not path.is_file():
            return None
        try:
            features = DiTFeatures.load(path)
            with Image.open(image_path) as image:  # reads the header only
                stale = tuple(features.mapping.image_size) != image.size or features.batch != 1
        except Exception:  # a damaged entry is re-extracted, never trusted
            return None
        if stale:  # the image changed since it was cached
            return None
        self.cached += 1
        return features

    def _extract(self, image_path: Path) -> DiTFeatures:
        if not image_path.is_file():
            raise FileNotFoundError(f"image {image_path} is missing; check the dataset folder (ROOT)")
        image = open_image(image_path)
        features = self.extractor(image)
        if not isinstance(features, DiTFeatures) or features.batch != 1:
            raise TypeError(f"the extractor must return DiTFeatures of one image, got {type(features).__name__}")
        if tuple(features.mapping.image_size) != image.size:
            raise DiTFInputError(
                f"the extractor mapped {image_path} as {features.mapping.image_size} but the image is {image.size}; "
                "its mapping must describe the original image"
            )
        self.extracted += 1
        if self.cache_dir is not None:
            _save_to_cache(features, cache_path(self.cache_dir, self.settings, image_path), self.settings)
        return features


def _save_to_cache(features: DiTFeatures, path: Path, settings: dict) -> None:
    """The entry and, once per settings folder, the settings that key it (both written atomically)."""
    manifest = path.parent / "settings.json"
    if not manifest.exists():
        write_json(manifest, settings, default=str)
    features.to(torch.device("cpu")).save(path)
