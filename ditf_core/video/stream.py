"""Features of a clip, frame by frame, from any source of DiTF features.

A :data:`FeatureSource` is any callable ``frames [m, 3, H, W] in [0, 1] -> DiTFeatures [m, C, h, w]``: a
``DiTFPipeline`` (``lambda frames: pipe.extract(frames, **settings)``), ComfyUI's DITF_MODEL (see the node pack),
or a test's synthetic extractor. :func:`stream_features` feeds it ``micro_batch`` frames at a time and yields the
features of one frame at a time, so only a micro-batch of features is ever alive.

Frames are a tensor [T, 3, H, W] or any sequence of [3, H, W] tensors (e.g. :class:`FrameFolder`, which reads
files only when a frame is asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..images import pil_to_tensor

FeatureSource = Callable[[torch.Tensor], DiTFeatures]
FrameSequence = torch.Tensor | Sequence[torch.Tensor]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def stream_features(source: FeatureSource, frames: FrameSequence, *, micro_batch: int = 1) -> Iterator[DiTFeatures]:
    """The features of each frame in order, as DiTFeatures of one image; ``micro_batch`` frames per source call."""
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise DiTFInputError(f"micro_batch must be a positive number of frames, got {micro_batch!r}")
    count, _ = check_frames(frames)
    for start in range(0, count, micro_batch):
        stop = min(count, start + micro_batch)
        batch = frames[start:stop] if isinstance(frames, torch.Tensor) else torch.stack(
            [frames[i] for i in range(start, stop)])
        features = source(batch)
        if not isinstance(features, DiTFeatures) or features.batch != stop - start:
            got = f"{features.batch} images" if isinstance(features, DiTFeatures) else type(features).__name__
            raise TypeError(f"the feature source must return DiTFeatures of the {stop - start} frames it was given, "
                            f"got {got}")
        for index in range(features.batch):
            yield features.select(index)


def unit_cells(features: torch.Tensor) -> torch.Tensor:
    """features [C, h, w] -> float32, each cell's vector scaled to unit length (``F.normalize(dim=0)``, eps 1e-12).

    Written as a sum of squares over the leading dimension: torch's norm over dim 0 of a [3072, 36, 60] map is
    about 8x slower on the CPU (measured), and this runs once per frame."""
    features = features.to(torch.float32)
    return features / features.square().sum(dim=0, keepdim=True).sqrt().clamp_min(1e-12)


def consistent_discard(extract: Callable[..., DiTFeatures], discard="auto") -> FeatureSource:
    """A source from ``extract(frames, discard=...)`` that drops the same channels from every frame of a clip.

    With ``discard="auto"`` each call would pick the massive channels of its own micro-batch (they can differ
    between frames); here the first call's choice (``DiTFeatures.discarded``) is passed to every later call.
    """
    chosen: list[list[int]] = []

    def source(frames: torch.Tensor) -> DiTFeatures:
        features = extract(frames, discard=chosen[0] if chosen else discard)
        if not chosen:
            chosen.append(list(features.discarded))
        return features

    return source


def pipeline_source(pipeline, *, discard="auto", **settings) -> FeatureSource:
    """A :data:`FeatureSource` of a :class:`~ditf_core.pipeline.DiTFPipeline` with fixed extraction settings."""
    return consistent_discard(lambda frames, discard: pipeline.extract(frames, discard=discard, **settings), discard)


def check_frames(frames: FrameSequence, name: str = "frames") -> tuple[int, tuple[int, int]]:
    """(frame count, (W, H)) of a clip of at least two frames, or an error naming ``name``."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise DiTFInputError(f"{name} must be [T, 3, H, W], got {list(frames.shape)}")
        count, size = frames.shape[0], (frames.shape[-1], frames.shape[-2])
    elif isinstance(frames, Sequence) and not isinstance(frames, (str, bytes)):
        count = len(frames)
        size = frames.size if isinstance(frames, FrameFolder) else (
            (frames[0].shape[-1], frames[0].shape[-2]) if count else (0, 0))
    else:
        raise TypeError(f"{name} must be a tensor [T, 3, H, W] or a sequence of [3, H, W] frames, "
                        f"got {type(frames).__name__}")
    if count < 2:
        raise DiTFInputError(f"{name} holds {count} frame{'s' if count != 1 else ''}; a clip needs at least 2 "
                             "(for one image use Extract DiTF Features / Correspondence Match)")
    return count, size


class FrameFolder(Sequence):
    """The image files of a folder, in name order, as [3, H, W] float frames in [0, 1], read on demand.

    Every frame must have the first frame's size (checked as it is read). Also reads the frames of one animated
    GIF / WebP / PNG file (Pillow decodes those; no video decoder is a dependency of this package).
    """

    def __init__(self, path: str | Path) -> None:
        from PIL import Image

        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise DiTFInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {self.path}")
            with Image.open(self.files[0]) as first:
                self.size = first.size
            self._frames = None
        elif self.path.is_file():
            self.files = []
            self._frames = _animation_frames(self.path)
            self.size = self._frames[0].size
        else:
            raise FileNotFoundError(f"no folder of frames (or animated image) at {self.path}")

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else len(self.files)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self._frames is not None:
            return pil_to_tensor(self._frames[index])
        from PIL import Image

        with Image.open(self.files[index]) as image:
            if image.size != self.size:
                raise DiTFInputError(f"{self.files[index].name} is {image.size[0]}x{image.size[1]} but the first "
                                     f"frame is {self.size[0]}x{self.size[1]}; every frame of a clip needs one size")
            return pil_to_tensor(image)

    def names(self) -> list[str]:
        """A file stem per frame (frame numbers for an animation)."""
        return [p.stem for p in self.files] if self.files else [f"{i:05d}" for i in range(len(self))]


def _animation_frames(path: Path) -> list:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    return frames
