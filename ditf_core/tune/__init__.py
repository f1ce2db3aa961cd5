"""The layer finder: the best block and t for a model, measured on the user's own images.

* :func:`find_layer` - host-agnostic: takes ``extract(pixels, t) -> {layer: DiTFeatures}`` (one early-exit capture
  per t covering every block) and the images; returns a :class:`LayerSearch` (PCK table, best, plot, JSON);
* :func:`tune_pipeline` - the same on a :class:`~ditf_core.DiTFPipeline`;
* ``python -m ditf_core tune`` (:mod:`ditf_core.commands.tune`) and the **Find DiTF Layer** node in ComfyUI.
"""

from __future__ import annotations

from collections.abc import Sequence

from .result import ALPHAS, LayerSearch
from .search import DEFAULT_TS, DEFAULT_WARPS, Extractor, find_layer
from .warps import KnownWarps, grid_points, make_warps


def pipeline_extractor(pipeline, *, layers: Sequence[int] | None = None, **settings) -> Extractor:
    """``extract(pixels, t)`` for a DiTFPipeline: one capture per t (per micro-batch) covers ``layers`` (default:
    every block); ``settings`` as in :meth:`~ditf_core.DiTFPipeline.extract` (mode, ensemble, resolution, seed...)."""
    blocks = list(range(pipeline.depth)) if layers is None else list(layers)
    discard = settings.pop("discard", "auto")

    def extract(pixels, t: float):
        run = pipeline.capture(pixels, layers=blocks, t=t, **settings)
        return {layer: pipeline.features(run, layer=layer, discard=discard) for layer in run.layers}

    return extract


def tune_pipeline(pipeline, images, *, layers: Sequence[int] | None = None, ts: Sequence[float] = DEFAULT_TS,
                  warps: int = DEFAULT_WARPS, seed: int = 0, progress=None, **settings) -> LayerSearch:
    """:func:`find_layer` on a :class:`~ditf_core.DiTFPipeline`; images: float tensors [3, H, W] in [0, 1]."""
    extract = pipeline_extractor(pipeline, layers=layers, seed=seed, **settings)
    return find_layer(extract, images, ts=ts, warps=warps, seed=seed, progress=progress)


__all__ = [
    "ALPHAS",
    "DEFAULT_TS",
    "DEFAULT_WARPS",
    "Extractor",
    "KnownWarps",
    "LayerSearch",
    "find_layer",
    "grid_points",
    "make_warps",
    "pipeline_extractor",
    "tune_pipeline",
]
