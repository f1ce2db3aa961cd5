"""DAVIS-2017 semi-supervised video object segmentation by label propagation: reader, harness, table.

Layout read (the official DAVIS-2017 trainval release)::

    <root>/ImageSets/2017/<split>.txt         sequence names, one a line
    <root>/JPEGImages/480p/<sequence>/*.jpg    frames (other image types are read too)
    <root>/Annotations/480p/<sequence>/*.png   indexed PNGs: 0 background, 1..N objects, 255 void

Protocol (DINO / DIFT / DiTF): the first frame's annotation is given; every later frame is labelled by
:func:`ditf_core.video.propagate_clip`; J and F are computed per object on every frame but the first and the
last, averaged over frames per object (:func:`~ditf_core.eval.video_metrics.sequence_statistics`), then over
all objects of all sequences; J&F is the mean of the two (``davis2017-evaluation``). The number of objects of a
sequence is the largest label of its first annotation. Our choice: void pixels (255) of the first annotation are
given to the background before propagation (they are excluded from scoring, as the reference does).

Results: ``<output>/<sequence>.json`` per sequence (written atomically as each finishes; a rerun into the same
folder skips sequences already there, so ``output`` must belong to one set of settings: the command line keys it by
them) and, with ``save_masks``, ``<output>/<sequence>/<frame>.png`` in DAVIS's palette.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DiTFInputError
from ..image_files import open_image
from ..outputs import save_image, write_json
from ..video import FeatureSource, FrameFolder, PropagationSettings, label_map_image, propagate_clip
from ..video.stream import IMAGE_SUFFIXES
from .video_metrics import boundary_f_measure, region_similarity, sequence_statistics

VOID = 255


@dataclass(frozen=True)
class DavisSequence:
    name: str
    frames: Path  # folder of JPEG frames
    annotations: list[Path]  # one indexed PNG per frame, same order


def read_davis(root: str | Path, split: str = "val", year: str = "2017", resolution: str = "480p") -> list[DavisSequence]:
    """The sequences of ``ImageSets/<year>/<split>.txt`` with their frame folders and annotations."""
    root = Path(root)
    listing = root / "ImageSets" / year / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"no {listing}: ROOT must be the DAVIS folder holding ImageSets/, JPEGImages/, "
                                "Annotations/ (the DAVIS-2017 trainval release)")
    sequences = []
    for name in (line.strip() for line in listing.read_text().splitlines()):
        if not name:
            continue
        frames = root / "JPEGImages" / resolution / name
        annotations = sorted((root / "Annotations" / resolution / name).glob("*.png"))
        count = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in frames.iterdir()) if frames.is_dir() else 0
        if count == 0 or len(annotations) != count:
            raise DiTFInputError(f"sequence {name}: {count} frames in {frames} but {len(annotations)} annotations; "
                                 "the evaluation needs one annotation per frame")
        sequences.append(DavisSequence(name, frames, annotations))
    return sequences


def read_annotation(path: Path) -> np.ndarray:
    """An indexed annotation PNG -> label map [H, W] uint8 (palette indices)."""
    image = open_image(path, mode=None)  # a damaged file: one clear error naming it
    if image.mode not in ("P", "L"):
        raise DiTFInputError(f"{path} is a {image.mode} image; DAVIS annotations are indexed (palette) PNGs")
    return np.array(image)


def first_annotation_size(sequence: DavisSequence) -> tuple[int, int]:
    """(width, height) of a sequence's first annotation (the frame size), checked to mark at least one object: the
    cheap part of a sequence that can be checked before a model loads."""
    first = read_annotation(sequence.annotations[0])
    if not ((first != VOID) & (first != 0)).any():
        raise DiTFInputError(f"sequence {sequence.name}: the first annotation {sequence.annotations[0]} marks no "
                             "object")
    return first.shape[1], first.shape[0]


def evaluate_davis(
    sequences: Sequence[DavisSequence],
    source: FeatureSource,
    *,
    settings: PropagationSettings | None = None,
    output: str | Path | None = None,
    save_masks: bool = False,
    micro_batch: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Propagate every sequence's first annotation and score it. Returns {"summary": {...}, "sequences": [...]}.

    progress(sequence name, frames done, frames) after each frame.
    """
    results = []
    for sequence in sequences:
        saved = None if output is None else Path(output) / f"{sequence.name}.json"
        masks_dir = Path(output) / sequence.name if output and save_masks else None
        if saved is not None and saved.is_file() and (masks_dir is None or _has_masks(masks_dir, sequence)):
            results.append(json.loads(saved.read_text()))
            continue
        each = None if progress is None else (lambda d, t, n=sequence.name: progress(n, d, t))
        result = evaluate_sequence(sequence, source, settings=settings, micro_batch=micro_batch, masks_dir=masks_dir,
                                   progress=each)
        if saved is not None:
            write_json(saved, result)
        results.append(result)
    return {"summary": summarize(results), "sequences": results}


def evaluate_sequence(sequence: DavisSequence, source: FeatureSource, *, settings=None, micro_batch: int = 1,
                      masks_dir: Path | None = None, progress=None) -> dict:
    """J and F per object and frame of one sequence (frames 1..T-2 scored)."""
    first = read_annotation(sequence.annotations[0])
    objects = int(first[first != VOID].max()) if (first != VOID).any() else 0
    if objects == 0:
        raise DiTFInputError(f"sequence {sequence.name}: the first annotation has no object")
    start = torch.from_numpy(np.where(first == VOID, 0, first).astype(np.int64))
    frames = FrameFolder(sequence.frames)
    last = len(frames) - 1
    j_curves = np.full((objects, max(0, last - 1)), np.nan)
    f_curves = np.full_like(j_curves, np.nan)
    for index, labels in enumerate(propagate_clip(source, frames, start, settings=settings, micro_batch=micro_batch,
                                                  progress=progress)):
        prediction = labels.numpy()
        if masks_dir is not None:
            save_image(label_map_image(labels), masks_dir / f"{sequence.annotations[index].stem}.png")
        if index == 0 or index == last:
            continue
        truth = read_annotation(sequence.annotations[index])
        void = truth == VOID
        for obj in range(objects):
            j_curves[obj, index - 1] = region_similarity(truth == obj + 1, prediction == obj + 1, void)
            f_curves[obj, index - 1] = boundary_f_measure(truth == obj + 1, prediction == obj + 1, void)
    per_object = []
    for obj in range(objects):
        j, f = sequence_statistics(j_curves[obj]), sequence_statistics(f_curves[obj])
        per_object.append({"object": obj + 1, "J": dict(zip("MRD", j)), "F": dict(zip("MRD", f)),
                           "J_per_frame": j_curves[obj].tolist(), "F_per_frame": f_curves[obj].tolist()})
    return {"sequence": sequence.name, "frames": len(frames), "objects": per_object}


def summarize(results: Sequence[dict]) -> dict:
    """Global means over all objects of all sequences (``davis2017-evaluation``'s global table)."""
    objects = [obj for result in results for obj in result["objects"]]
    if not objects:
        return {}
    mean = {f"{m}-{s}": float(np.mean([obj[m][s[0]] for obj in objects]))
            for m in ("J", "F") for s in ("Mean", "Recall", "Decay")}
    return {"J&F-Mean": (mean["J-Mean"] + mean["F-Mean"]) / 2, **mean, "objects": len(objects),
            "sequences": len(results)}


def format_table(evaluation: dict) -> str:
    """The global table, then one row per object (``<sequence>_<object>``), in percent."""
    summary = evaluation["summary"]
    names = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
    lines = [" ".join(f"{n:>9}" for n in names), " ".join(f"{100 * summary[n]:9.1f}" for n in names), "",
             f"{'sequence':<24} {'J-Mean':>7} {'F-Mean':>7}"]
    for result in evaluation["sequences"]:
        for obj in result["objects"]:
            lines.append(f"{result['sequence'] + '_' + str(obj['object']):<24} {100 * obj['J']['M']:7.1f} "
                         f"{100 * obj['F']['M']:7.1f}")
    return "\n".join(lines)


def _has_masks(folder: Path, sequence: DavisSequence) -> bool:
    """Whether ``folder`` holds a saved mask for every frame of ``sequence``."""
    return all((folder / f"{annotation.stem}.png").is_file() for annotation in sequence.annotations)
