"""Settings of the video engines, checked once: extraction defaults per family, propagation, tracking.

Extraction defaults for video (:func:`video_defaults`) are the DiTF paper's DAVIS-2017 settings for Flux
(block k = 24, t = 0.09, one noise draw, long side 960 px, prompt "a photo of a image", massive channels
discarded); other families keep their own image defaults (no published video setting).

Propagation (:class:`PropagationSettings`) follows DINO / DIFT / DiTF's label propagation: context = the first
frame + the ``context`` previous frames, affinity ``exp(<f_t, f_s> / temperature)`` inside a
(2 ``radius`` + 1)^2 neighbourhood, the ``top_k`` largest kept per query. Tracking (:class:`TrackSettings`) is
our own training-free design (see :mod:`ditf_core.video.track`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import DiTFInputError
from ..families import FamilyDefaults

# DiTF (Gan et al. 2025), DAVIS-2017 label propagation with Flux.1-dev.
DAVIS_FLUX_LAYER, FLUX_DEPTH = 24, 57
DAVIS_FLUX = dict(t=0.09, ensemble=1, resolution=960)
DAVIS_PROMPT = "a photo of a image"  # sic: the paper's prompt


@dataclass(frozen=True)
class VideoDefaults:
    """Extraction settings a video engine uses when the caller leaves them out, and where they come from."""

    layer: int
    t: float
    ensemble: int
    resolution: int
    prompt: str
    source: str


def video_defaults(family: str, defaults: FamilyDefaults, depth: int) -> VideoDefaults:
    """The video extraction defaults of a model: DiTF's DAVIS values for Flux (k = 24 of 57, kept at the same
    relative depth on other depths), the family's image defaults otherwise (empty prompt)."""
    if family == "flux":
        layer = DAVIS_FLUX_LAYER if depth == FLUX_DEPTH else min(depth - 1, round(DAVIS_FLUX_LAYER / FLUX_DEPTH * depth))
        return VideoDefaults(layer=layer, prompt=DAVIS_PROMPT, source="DiTF paper, DAVIS-2017 (Flux: k=24, t=0.09, "
                             "E=1, 960 px, prompt 'a photo of a image')", **DAVIS_FLUX)
    return VideoDefaults(layer=defaults.layer, t=defaults.t, ensemble=defaults.ensemble,
                         resolution=defaults.resolution, prompt="", source=defaults.source)


@dataclass(frozen=True)
class PropagationSettings:
    """Label propagation (DINO's ``eval_video_segmentation.py`` settings, which DIFT and DiTF reuse).

    context: previous frames kept besides the anchor (n); radius: neighbourhood half-size r in feature cells;
    top_k: affinities kept per query cell over all context cells; temperature: tau in exp(cosine / tau).
    """

    context: int = 7
    radius: int = 12
    top_k: int = 5
    temperature: float = 0.1

    def __post_init__(self):
        _integer("context", self.context, 0)
        _integer("radius", self.radius, 0)
        _integer("top_k", self.top_k, 1)
        _positive("temperature", self.temperature)


@dataclass(frozen=True)
class TrackSettings:
    """Point tracking (our design; see :mod:`ditf_core.video.track`).

    threshold: a point is occluded when its best cosine falls below this; search_radius: half-size in feature
    cells of the window searched around the last visible position before the whole frame; templates: recent
    confident descriptors kept per point; anchor_weight: the query descriptor's share of the template (the rest is
    the mean of the recent ones); template_score: cosine a match needs to become a template; cycle_tolerance:
    feature cells the match may miss the query point by when matched back into the query frame; soft_window /
    soft_temperature: the sub-cell soft-argmax around the best cell.
    """

    threshold: float = 0.6
    search_radius: int = 8
    templates: int = 4
    anchor_weight: float = 0.5
    template_score: float = 0.75
    cycle_tolerance: float = 2.0
    soft_window: int = 3
    soft_temperature: float = 0.02

    def __post_init__(self):
        _unit("threshold", self.threshold)
        _integer("search_radius", self.search_radius, 0)
        _integer("templates", self.templates, 0)
        _unit("anchor_weight", self.anchor_weight)
        if self.anchor_weight == 0:
            raise DiTFInputError("anchor_weight must be above 0: the query descriptor always takes part")
        _unit("template_score", self.template_score)
        _positive("cycle_tolerance", self.cycle_tolerance)
        _integer("soft_window", self.soft_window, 1)
        if self.soft_window % 2 == 0:
            raise DiTFInputError(f"soft_window must be odd (a window centred on the best cell), got {self.soft_window}")
        _positive("soft_temperature", self.soft_temperature)


def _integer(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DiTFInputError(f"{name} must be an integer of at least {low}, got {value!r}")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DiTFInputError(f"{name} must be a finite number above 0, got {value!r}")


def _unit(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise DiTFInputError(f"{name} must be a number in [0, 1], got {value!r}")
