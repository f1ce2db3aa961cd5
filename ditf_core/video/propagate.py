"""Label propagation through a clip (DAVIS protocol as in DINO / DIFT / DiTF), in memory bounded by the context.

:class:`LabelPropagator` holds the anchor (the first frame's features and one-hot labels, NEAREST-downsampled to
the feature grid) and a queue of the ``context`` previous frames' features and soft labels; each new frame's
labels come from :func:`~ditf_core.video.affinity.propagate_labels` over anchor + queue, then it joins the queue
(the oldest leaves). Nothing else is kept, so memory does not depend on the clip length.

:func:`labels_to_image` turns soft grid labels into a label map at the original size exactly as the protocol
does: bilinear upsampling by the stride, per-channel min-max normalisation, argmax, NEAREST back to the original
size (PIL's NEAREST, i.e. ``nearest-exact``).

:func:`propagate_clip` runs the whole thing over a :data:`~ditf_core.video.stream.FeatureSource` and frames,
yielding one label map per frame; ``keyframes`` (our extension of the protocol) restart it from a given label map
at later frames: the keyframe becomes the anchor and the queue is emptied, so drifted labels do not return.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..recipe import ProgressFn
from .affinity import propagate_labels
from .settings import PropagationSettings
from .stream import FeatureSource, FrameSequence, check_frames, stream_features, unit_cells


class LabelPropagator:
    """The propagation state: anchor + queue. ``start`` (re)anchors it; ``step`` labels the next frame."""

    def __init__(self, settings: PropagationSettings | None = None, *, tile: int | None = None) -> None:
        self.settings = settings or PropagationSettings()
        self.tile = tile
        self.anchor: tuple[torch.Tensor, torch.Tensor] | None = None
        self.queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=self.settings.context)
        self.peak_bytes = 0

    def start(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Anchor on a frame with known labels. features: [C, h, w]; labels: [L, h, w] (one-hot or soft)."""
        if features.ndim != 3 or labels.ndim != 3 or features.shape[1:] != labels.shape[1:]:
            raise DiTFInputError(f"anchor features [C, h, w] and labels [L, h, w] must share h, w; got "
                                 f"{list(features.shape)} and {list(labels.shape)}")
        self.anchor = (unit_cells(features), labels.to(torch.float32))
        self.queue.clear()
        self._account()

    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Soft labels [L, h, w] of the next frame (features [C, h, w]); the frame then joins the queue."""
        if self.anchor is None:
            raise RuntimeError("start() the propagator on a labelled frame first")
        query = unit_cells(features)
        if query.shape != self.anchor[0].shape:
            raise DiTFInputError(f"frame features are {list(query.shape)} but the anchor's are "
                                 f"{list(self.anchor[0].shape)}; every frame of a clip must have one size")
        frames = [self.anchor, *self.queue]
        s = self.settings
        labels = propagate_labels(query, [f for f, _ in frames], torch.stack([y for _, y in frames]),
                                  radius=s.radius, top_k=s.top_k, temperature=s.temperature, tile=self.tile)
        if s.context > 0:
            self.queue.append((query, labels))
        self._account()
        return labels

    @property
    def held_bytes(self) -> int:
        """Bytes of the tensors this propagator holds (anchor + queue)."""
        held = [*([self.anchor] if self.anchor else []), *self.queue]
        return sum(t.numel() * t.element_size() for pair in held for t in pair)

    def _account(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)


def propagate_clip(
    source: FeatureSource,
    frames: FrameSequence,
    labels: torch.Tensor,
    *,
    keyframes: Mapping[int, torch.Tensor] | None = None,
    settings: PropagationSettings | None = None,
    micro_batch: int = 1,
    progress: ProgressFn | None = None,
    propagator: LabelPropagator | None = None,
) -> Iterator[torch.Tensor]:
    """Label maps [H, W] (int64, values 0..L-1) of every frame, the first one included, in order.

    frames: [T, 3, H, W] in [0, 1] (or a sequence of [3, H, W]); labels: the first frame's label map [H, W]
    (0 = background, 1..L-1 objects); keyframes: {frame index: label map} restarting propagation there.
    progress(done, total) is called after each frame (it may raise to stop).
    """
    count, size = check_frames(frames)
    maps = {0: _check_label_map(labels, size, "mask of frame 0"), **{
        int(k): _check_label_map(v, size, f"mask of keyframe {k}") for k, v in (keyframes or {}).items()}}
    for index in maps:
        if not 0 <= index < count:
            raise DiTFInputError(f"keyframe {index} is outside the clip (frames 0..{count - 1})")
    num_labels = int(max(int(m.max()) for m in maps.values())) + 1
    propagator = propagator or LabelPropagator(settings)
    for index, features in enumerate(stream_features(source, frames, micro_batch=micro_batch)):
        grid = features.features[0]
        if index in maps:
            propagator.start(grid, labels_to_grid(maps[index], features, num_labels))
            result = maps[index]
        else:
            result = labels_to_image(propagator.step(grid), features)
        yield result
        if progress is not None:
            progress(index + 1, count)


def labels_to_grid(label_map: torch.Tensor, features: DiTFeatures, num_labels: int) -> torch.Tensor:
    """Label map [H, W] -> one-hot [L, h, w] on the feature grid, NEAREST-downsampled (PIL's NEAREST, as DINO's
    ``read_seg``)."""
    width, height = features.mapping.grid_size
    small = F.interpolate(label_map[None, None].to(torch.float32), size=(height, width), mode="nearest-exact")
    return F.one_hot(small[0, 0].long(), num_labels).permute(2, 0, 1).to(torch.float32)


def labels_to_image(soft: torch.Tensor, features: DiTFeatures) -> torch.Tensor:
    """Soft labels [L, h, w] -> label map [H, W] (int64) at the original image size, by the protocol: bilinear
    upsampling by the stride, per-channel min-max normalisation, argmax, NEAREST to the original size."""
    mapping = features.mapping
    stride = mapping.model_size[0] // mapping.grid_size[0], mapping.model_size[1] // mapping.grid_size[1]
    up = F.interpolate(soft[None], scale_factor=(stride[1], stride[0]), mode="bilinear", align_corners=False)[0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    # DINO's norm_mask: channels whose max is 0 stay as they are; a constant positive channel would divide 0 by 0
    # there (NaN); we leave it at 0 instead (our choice; the argmax then falls to another channel).
    positive = up.amax(dim=(1, 2), keepdim=True) > 0
    normed = torch.where(positive, (up - low) / span.clamp_min(torch.finfo(torch.float32).tiny), up)
    winner = _first_argmax(normed).to(torch.float32)
    width, height = mapping.image_size
    return F.interpolate(winner[None, None], size=(height, width), mode="nearest-exact")[0, 0].long()


def mask_to_labels(mask: torch.Tensor, name: str = "mask", threshold: float = 0.5) -> torch.Tensor:
    """A soft mask [H, W] in [0, 1] -> label map [H, W] (1 where mask > threshold); an empty mask is an error."""
    labels = (mask > threshold).long()
    if not labels.any():
        raise DiTFInputError(f"{name} is empty (no pixel above {threshold}); paint the object to follow")
    return labels


def _check_label_map(label_map, size: tuple[int, int], name: str) -> torch.Tensor:
    if not isinstance(label_map, torch.Tensor) or label_map.ndim != 2:
        shape = list(label_map.shape) if isinstance(label_map, torch.Tensor) else type(label_map).__name__
        raise DiTFInputError(f"{name} must be a label map [H, W], got {shape}")
    width, height = size
    if (label_map.shape[1], label_map.shape[0]) != (width, height):
        raise DiTFInputError(f"{name} is {label_map.shape[1]}x{label_map.shape[0]} but the frames are "
                             f"{width}x{height}; give a mask of the frame size")
    if label_map.is_floating_point() or label_map.min() < 0:
        raise DiTFInputError(f"{name} must hold integer labels 0, 1, 2, ... (0 = background)")
    return label_map.long()


def _first_argmax(values: torch.Tensor) -> torch.Tensor:
    """argmax over dim 0 of [L, H, W] (the first maximum wins, as torch.argmax), label by label: torch's argmax
    over the leading dimension of a large map is several times slower."""
    best, index = values[0].clone(), torch.zeros(values.shape[1:], dtype=torch.long)
    for label in range(1, values.shape[0]):
        better = values[label] > best
        index[better] = label
        best = torch.where(better, values[label], best)
    return index

