"""What the video nodes need beyond the core: DITF_MODEL as a feature source, and IMAGE / MASK batches as clips.

* :func:`model_source` - a ``ditf_core.video`` FeatureSource on a DITF_MODEL (either host): the video defaults of
  its family filled in, the text conditioning encoded once for the whole clip, and one set of discarded channels
  for every frame. It only calls ``DiTFModel.extract``, which works on ``model.clone()``: the user's MODEL is never
  touched.
* :class:`ComfyFrames` - a ComfyUI IMAGE [T, H, W, C] as a sequence of [3, H, W] frames, converted one at a time
  (a long clip is not copied whole).
* :func:`keyframe_labels` - MASK batch + keyframe list -> the label maps propagation starts from.

No ComfyUI import (tested without it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ditf_core.errors import DiTFInputError
from ..ditf_core.video import consistent_discard, mask_to_labels, video_defaults
from .checks import IMAGE_TOLERANCE
from .model import DiTFModel


@dataclass(frozen=True)
class VideoExtraction:
    """Resolved extraction settings of a clip (0 / -1 widgets replaced by the family's video defaults)."""

    layer: int
    t: float
    ensemble: int
    resolution: int
    seed: int
    prompt: str


def model_source(ditf_model: DiTFModel, *, layer: int, t: float, ensemble: int, resolution: int, seed: int,
                 discard, prompt: str = "", conditioning=None):
    """(FeatureSource, VideoExtraction) for a clip. layer -1, t 0, ensemble 0, resolution 0: the video defaults;
    empty prompt: the family's video prompt when a text encoder is wired (Flux: "a photo of a image"), else
    zero conditioning."""
    if not isinstance(ditf_model, DiTFModel):
        raise TypeError(f"ditf_model must come from a Load DiT (DiTF) node, got {type(ditf_model).__name__}")
    video = video_defaults(ditf_model.family.name, ditf_model.defaults, ditf_model.depth)
    if not prompt.strip() and conditioning is None and ditf_model.host.can_encode_prompts:
        prompt = video.prompt
    chosen = VideoExtraction(layer=video.layer if layer == -1 else layer, t=video.t if t == 0 else t,
                             ensemble=video.ensemble if ensemble == 0 else ensemble,
                             resolution=video.resolution if resolution == 0 else resolution, seed=seed, prompt=prompt)
    cond = ditf_model.conditioning(prompt, conditioning, 1)
    if cond.source == "prompt":  # encoded once here, not once per micro-batch of frames
        conditioning, prompt = [[cond.context, {"pooled_output": cond.pooled, "guidance": cond.guidance}]], ""

    def extract(frames: torch.Tensor, discard):
        return ditf_model.extract(frames, layer=chosen.layer, t=chosen.t, ensemble=chosen.ensemble,
                                  resolution=chosen.resolution, seed=seed, mode="ditf", discard=discard,
                                  prompt=prompt, conditioning=conditioning)

    return consistent_discard(extract, discard), chosen


class ComfyFrames(Sequence):
    """IMAGE [T, H, W, C] (C = 1, 3 or 4) -> frames [3, H, W] float32 in [0, 1], converted when asked for."""

    def __init__(self, image, name: str = "frames") -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise DiTFInputError(f"{name} must be an IMAGE batch [T, H, W, C] (the frames of a clip), got {shape}")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise DiTFInputError(f"{name} is empty: shape {list(image.shape)}")
        self.image, self.name = image, name
        self.size = (image.shape[2], image.shape[1])  # (W, H)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        frame = self.image[index].detach().to("cpu", torch.float32)
        low, high = float(frame.min()), float(frame.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < -IMAGE_TOLERANCE or high > 1 + IMAGE_TOLERANCE:
            raise DiTFInputError(f"{self.name}[{index}] holds values in [{low:.3g}, {high:.3g}]; IMAGE values must be "
                                 "finite and in [0, 1]")
        frame = frame.clamp(0.0, 1.0).movedim(-1, 0)
        return frame.expand(3, -1, -1) if frame.shape[0] == 1 else frame[:3]


def parse_keyframes(text) -> list[int]:
    """"0" or "0, 40, 80" -> [0, 40, 80] (distinct frame numbers, ascending); an error names the input."""
    if not isinstance(text, str):
        raise TypeError(f"keyframes must be text like '0' or '0, 40', got {type(text).__name__}")
    try:
        frames = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise DiTFInputError(f"keyframes must be frame numbers like '0' or '0, 40, 80', got {text!r}") from None
    if not frames or frames != sorted(set(frames)) or frames[0] != 0:
        raise DiTFInputError(f"keyframes must start with 0 and go up, one number per mask (got {text!r}); the first "
                             "frame always needs a mask")
    return frames


def keyframe_labels(masks: torch.Tensor, keyframes: list[int], count: int, size: tuple[int, int]) -> dict:
    """masks [B, H, W] with B = len(keyframes) -> {frame: label map [H, W]} (mask > 0.5 = object)."""
    if masks.shape[0] != len(keyframes):
        raise DiTFInputError(f"mask holds {masks.shape[0]} masks but keyframes lists {len(keyframes)} frames "
                             f"({', '.join(map(str, keyframes))}); give one mask per keyframe, in order")
    if keyframes[-1] >= count:
        raise DiTFInputError(f"keyframe {keyframes[-1]} is beyond the clip: frames holds {count} frames (0..{count - 1})")
    if (masks.shape[2], masks.shape[1]) != tuple(size):
        raise DiTFInputError(f"mask is {masks.shape[2]}x{masks.shape[1]} but the frames are {size[0]}x{size[1]}; "
                             "draw the mask on a frame of this clip (or resize it to the frame size)")
    return {frame: mask_to_labels(masks[i], f"mask {i} (keyframe {frame})") for i, frame in enumerate(keyframes)}
