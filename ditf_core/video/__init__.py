"""DiTF features through video: mask (label) propagation and point tracking, memory bounded by the context.

Everything takes a :data:`FeatureSource` (``frames [m, 3, H, W] -> DiTFeatures``), so a ``DiTFPipeline``, ComfyUI's
DITF_MODEL or a synthetic extractor can feed it; frames stream through it ``micro_batch`` at a time.

* :func:`propagate_clip` / :class:`LabelPropagator` - DAVIS-style label propagation (DINO / DIFT / DiTF protocol)
  with the neighbourhood affinity computed only inside each query's window (:func:`propagate_labels`);
* :func:`track_clip` / :class:`PointTracker` / :func:`track_queries` - training-free point tracking (our design);
* :func:`video_defaults` - DiTF's DAVIS extraction settings for Flux, the family defaults otherwise.

    source = pipeline_source(pipe, **vars(video_defaults(...)))       # or any frames -> DiTFeatures callable
    for labels in propagate_clip(source, frames, first_frame_labels):  # label map [H, W] per frame
        ...
"""

from .affinity import propagate_labels, window_affinity
from .draw import draw_tracks, label_map_image, overlay_labels
from .propagate import LabelPropagator, labels_to_grid, labels_to_image, mask_to_labels, propagate_clip
from .settings import DAVIS_PROMPT, PropagationSettings, TrackSettings, VideoDefaults, video_defaults
from .stream import FeatureSource, FrameFolder, consistent_discard, pipeline_source, stream_features
from .track import PointTracker, TrackStep, track_clip, track_queries

__all__ = [
    "DAVIS_PROMPT",
    "FeatureSource",
    "FrameFolder",
    "LabelPropagator",
    "PointTracker",
    "PropagationSettings",
    "TrackSettings",
    "TrackStep",
    "VideoDefaults",
    "consistent_discard",
    "draw_tracks",
    "label_map_image",
    "labels_to_grid",
    "labels_to_image",
    "mask_to_labels",
    "overlay_labels",
    "pipeline_source",
    "propagate_clip",
    "propagate_labels",
    "stream_features",
    "track_clip",
    "track_queries",
    "video_defaults",
    "window_affinity",
]
