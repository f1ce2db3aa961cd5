"""Training-free point tracking on DiTF features (our design; the paper evaluates label propagation only).

Per point, :class:`PointTracker` keeps:

* the anchor: the query descriptor, sampled bilinearly from the query frame's (unit-norm) features at the query
  point, and the query frame's features themselves (for the backward check);
* up to ``templates`` recent confident descriptors (cosine >= ``template_score``, backward check passed).

Per frame (:meth:`PointTracker.step`), with unit-norm features:

1. template = ``anchor_weight`` x anchor + (1 - ``anchor_weight``) x mean of the recent templates (the anchor
   alone while there are none); its dot product with a cell is the same mix of cosines;
2. best cell inside a (2 ``search_radius`` + 1)^2 window around the last visible position; when that scores below
   ``threshold``, the best cell of the whole frame (global fallback: points come back after occlusions);
3. sub-cell position: softmax-weighted mean cell position in a ``soft_window`` neighbourhood of the best cell
   (``ditf_core.matching.search.window_soft_argmax``);
4. backward check: the descriptor found there is matched into the query frame (best cell + the same refinement);
   it must land within ``cycle_tolerance`` cells of the query point;
5. visible when the score >= ``threshold`` and the backward check holds. A visible point moves there and (when
   confident) adds a template; an occluded point reports its best guess: the match when only the backward check
   failed, else its last visible position.

Memory: the query frame's features, [K, C] per template, never a frame per step. Coordinates in and out are
ORIGINAL image pixels; internally feature cells (``PixelMapping``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..matching.points import check_points
from ..matching.search import sample_descriptors, window_soft_argmax
from ..recipe import ProgressFn
from .settings import TrackSettings
from .stream import FeatureSource, FrameSequence, check_frames, stream_features, unit_cells

CHUNK_ELEMENTS = 1 << 22  # similarities alive at once


@dataclass(frozen=True)
class TrackStep:
    """One frame's answer for K points: xy [K, 2] original pixels, visible [K] bool, score [K] (template cosine)."""

    xy: torch.Tensor
    visible: torch.Tensor
    score: torch.Tensor

    def record(self, frame: int) -> dict:
        """As JSON: ``{"frame", "points": [{"x", "y", "visible", "score"}, ...]}`` (0.01 px, 1e-4)."""
        return {"frame": frame, "points": [
            {"x": round(x, 2), "y": round(y, 2), "visible": bool(v), "score": round(s, 4)}
            for (x, y), v, s in zip(self.xy.tolist(), self.visible.tolist(), self.score.tolist())]}


class PointTracker:
    """Tracks K points from a query frame through later (or earlier) frames, one :meth:`step` per frame."""

    def __init__(self, query: DiTFeatures, points, settings: TrackSettings | None = None) -> None:
        """query: the query frame's features (batch of one); points: [K, 2] pixels or KJNodes JSON on that frame."""
        self.settings = settings or TrackSettings()
        self.mapping = query.mapping
        xy = check_points(points, self.mapping.image_size, 1, name="points")[0]
        self.query_map = unit_cells(query.features[0])  # [C, h, w]
        self.query_uv = self.mapping.to_feature(xy)  # [K, 2]
        self.anchor = _descriptors(self.query_map, self.query_uv)  # [K, C]
        count, channels = self.anchor.shape
        self.recent = torch.zeros(self.settings.templates, count, channels)
        self.filled = torch.zeros(self.settings.templates, count, dtype=torch.bool)
        self.slot = torch.zeros(count, dtype=torch.long)
        self.last_uv = self.query_uv.clone()
        self.first = TrackStep(xy.clone(), torch.ones(count, dtype=torch.bool), torch.ones(count))

    @property
    def held_bytes(self) -> int:
        tensors = (self.query_map, self.anchor, self.recent, self.filled, self.last_uv)
        return sum(t.numel() * t.element_size() for t in tensors)

    def step(self, features: DiTFeatures) -> TrackStep:
        """The points in the next frame (features of one image, the query frame's size and grid)."""
        if features.mapping != self.mapping:
            raise DiTFInputError(f"frame features map {features.mapping.image_size} px to {features.mapping.grid_size} "
                                 f"cells but the query frame's map {self.mapping.image_size} to {self.mapping.grid_size}; "
                                 "every frame of a clip needs one size and one setting")
        s = self.settings
        frame = unit_cells(features.features[0])
        uv, score = self._search(frame, self._templates())
        found = _descriptors(frame, uv)
        back, _ = _best(found, self.query_map, None, s)
        consistent = (back - self.query_uv).norm(dim=1) <= s.cycle_tolerance
        matched = score >= s.threshold
        visible = matched & consistent
        guess = torch.where(matched[:, None], uv, self.last_uv)
        self.last_uv = torch.where(visible[:, None], uv, self.last_uv)
        self._remember(found, visible & (score >= s.template_score))
        xy = self.mapping.to_pixel(guess)
        size = torch.tensor(self.mapping.image_size, dtype=torch.float32)
        return TrackStep(torch.minimum(xy.clamp_min(0.0), size - 1), visible, score)

    def _templates(self) -> torch.Tensor:
        weight = self.settings.anchor_weight
        counts = self.filled.sum(dim=0)  # [K]
        recent = (self.recent * self.filled[..., None]).sum(dim=0) / counts.clamp_min(1)[:, None]
        mixed = weight * self.anchor + (1.0 - weight) * recent
        return torch.where((counts > 0)[:, None], mixed, self.anchor)

    def _search(self, frame: torch.Tensor, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        h, w = frame.shape[-2:]
        rows = torch.arange(h)[:, None].expand(h, w).reshape(-1)
        cols = torch.arange(w)[None, :].expand(h, w).reshape(-1)
        near = ((rows[None] - self.last_uv[:, 1:2].round()).abs() <= s.search_radius) & (
            (cols[None] - self.last_uv[:, 0:1].round()).abs() <= s.search_radius)  # [K, hw]
        uv, score = _best(templates, frame, near, s)
        fallback = score < s.threshold
        if fallback.any():
            uv_all, score_all = _best(templates[fallback], frame, None, s)
            better = score_all > score[fallback]
            uv[fallback] = torch.where(better[:, None], uv_all, uv[fallback])
            score[fallback] = torch.where(better, score_all, score[fallback])
        return uv, score

    def _remember(self, descriptors: torch.Tensor, confident: torch.Tensor) -> None:
        if self.settings.templates == 0 or not confident.any():
            return
        points = confident.nonzero()[:, 0]
        slots = self.slot[points]
        self.recent[slots, points] = descriptors[points]
        self.filled[slots, points] = True
        self.slot[points] = (slots + 1) % self.settings.templates


def track_clip(
    source: FeatureSource,
    frames: FrameSequence,
    points,
    *,
    settings: TrackSettings | None = None,
    micro_batch: int = 1,
    progress: ProgressFn | None = None,
) -> Iterator[TrackStep]:
    """Track points given on the first frame through the clip: one :class:`TrackStep` per frame (the first one
    included: the points themselves, visible). progress(done, total) after each frame (it may raise to stop)."""
    count, _ = check_frames(frames)
    tracker = None
    for index, features in enumerate(stream_features(source, frames, micro_batch=micro_batch)):
        if tracker is None:
            tracker = PointTracker(features, points, settings)
            result = tracker.first
        else:
            result = tracker.step(features)
        yield result
        if progress is not None:
            progress(index + 1, count)


def track_queries(
    features_at: Callable[[int], DiTFeatures],
    num_frames: int,
    queries: torch.Tensor,
    *,
    settings: TrackSettings | None = None,
    backward: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries on any frames (TAP-Vid style): queries [Q, 3] (frame, x, y) in pixels -> tracks [Q, T, 2] and
    visible [Q, T]. One pass forward over the frames (each query tracked from its frame on), and with
    ``backward`` one pass back (each query tracked from its frame down to frame 0). ``features_at(t)`` gives a
    frame's features (batch of one); it is called once per frame and pass. Each query frame's tracker keeps that
    frame's features, so memory grows with the number of distinct query frames (not with the clip otherwise)."""
    frames_of = queries[:, 0].round().long()
    if ((frames_of < 0) | (frames_of >= num_frames)).any():
        raise DiTFInputError(f"query frames must lie in 0..{num_frames - 1}")
    tracks = torch.zeros(len(queries), num_frames, 2)
    visible = torch.zeros(len(queries), num_frames, dtype=torch.bool)
    passes = [range(num_frames), range(num_frames - 1, -1, -1)] if backward else [range(num_frames)]
    done, total = 0, num_frames * len(passes)
    for order in passes:
        trackers: list[tuple[torch.Tensor, PointTracker]] = []
        for t in order:
            features = features_at(t)
            for ids, tracker in trackers:
                step = tracker.step(features)
                tracks[ids, t], visible[ids, t] = step.xy, step.visible
            starting = (frames_of == t).nonzero()[:, 0]
            if len(starting):
                tracker = PointTracker(features, queries[starting, 1:], settings)
                tracks[starting, t], visible[starting, t] = tracker.first.xy, True
                trackers.append((starting, tracker))
            done += 1
            if progress is not None:
                progress(done, total)
    return tracks, visible


def _best(templates: torch.Tensor, frame: torch.Tensor, allowed: torch.Tensor | None, s: TrackSettings):
    """Best cell of each template [K, C] in frame [C, h, w] (restricted to ``allowed`` [K, hw]), refined to
    sub-cell -> uv [K, 2], score [K] (dot product at the best cell). Chunked over templates."""
    channels, h, w = frame.shape
    flat = frame.reshape(channels, h * w)
    rows = max(1, CHUNK_ELEMENTS // (h * w))
    uvs, scores = [], []
    for start in range(0, templates.shape[0], rows):
        similarity = templates[start : start + rows] @ flat  # [k, hw]
        if allowed is not None:
            similarity = similarity.masked_fill(~allowed[start : start + rows], float("-inf"))
        index = similarity.argmax(dim=1)
        scores.append(similarity.gather(1, index[:, None])[:, 0])
        if s.soft_window > 1:
            uvs.append(window_soft_argmax(similarity, index, (h, w), s.soft_window, s.soft_temperature))
        else:
            uvs.append(torch.stack([index % w, index // w], dim=1).to(torch.float32))
    return torch.cat(uvs), torch.cat(scores)


def _descriptors(frame: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Unit descriptors [K, C] read bilinearly from frame [C, h, w] at feature coordinates uv [K, 2]."""
    return F.normalize(sample_descriptors(frame[None], uv[None])[0], dim=1)

