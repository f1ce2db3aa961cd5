"""Readers for the semantic-correspondence benchmarks, in the layouts their usual evaluation code reads.

Every reader returns a list of :class:`Pair` with keypoints in ORIGINAL image pixels (x, y).

SPair-71k (the official release, as read by DiTF's ``eval_spair.py``)::

    <root>/PairAnnotation/<split>/<name>.json   src_imname, trg_imname, category, src_kps [[x, y], ...],
                                                trg_kps, trg_bndbox [x1, y1, x2, y2], src_imsize [W, H, C], ...
    <root>/JPEGImages/<category>/<imname>
    PCK threshold: max(x2 - x1, y2 - y1) of the target box (no +1, as in eval_spair.py).

PF-PASCAL (the weakalign / CNNGeometric pair lists used by SCOT, CATs, GeoAware-SC; no .mat files needed)::

    <root>/<split>_pairs_pf_pascal.csv   (<root> is the PF-dataset-PASCAL folder) with columns
        source_image, target_image, class, XA, YA, XB, YB
    class: 1..20 in PASCAL VOC order (a class name is accepted too); XA/YA/XB/YB: ';'-separated coordinates
    of the source (A) and target (B) keypoints. Image paths are relative to <root>/.. (as GeoAware-SC reads
    them, e.g. "PF-dataset-PASCAL/JPEGImages/2009_002542.jpg"), or to <root> itself.
    Coordinates are used as stored (the CSV's own pixel convention).
    PCK threshold: max(H, W) of the target image.

AP-10K (the pair layout GeoAware-SC's ``prepare_ap10k`` writes)::

    <root>/PairAnnotation/<split>/<src>-<trg>:<species>.json   {"src_json_path": ..., "trg_json_path": ...}
    <root>/ImageAnnotation/<family>/<species>/<id>.json        COCO-style: bbox [x, y, w, h], width, height,
                                                               keypoints [x1, y1, v1, ...] (17 points), name
    <root>/JPEGImages/<family>/<species>/<id>.jpg
    The stored json paths carry a machine-specific prefix (e.g. "data/ap-10k/"): everything from
    "ImageAnnotation/" on is resolved under <root>. Keypoints visible (v > 0) in both images are evaluated.
    PCK threshold: max(w, h) of the target box.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiTFInputError

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class Pair:
    """One evaluation pair. Points [K, 2] in original pixels (x, y); ``threshold_size`` is the length that
    alpha multiplies (target box max side), or None for the target image's max side."""

    name: str
    category: str
    source_image: Path
    target_image: Path
    source_points: torch.Tensor
    target_points: torch.Tensor
    threshold_size: float | None


def read_spair(root: str | Path, split: str = "test") -> list[Pair]:
    """SPair-71k pairs of ``split`` ("test", "val" or "trn")."""
    root = Path(root)
    folder = _existing_dir(root / "PairAnnotation" / split, "SPair-71k pair annotations")
    pairs = []
    for path in sorted(folder.glob("*.json")):
        data = _read_json(path)
        try:
            category = data["category"]
            x1, y1, x2, y2 = (float(v) for v in data["trg_bndbox"])
            source, target = _points(data["src_kps"], path), _points(data["trg_kps"], path)
            names = data["src_imname"], data["trg_imname"]
        except KeyError as error:
            raise DiTFInputError(f"{path} lacks the SPair-71k field {error}; is it a PairAnnotation file?") from None
        if source.shape != target.shape:
            raise DiTFInputError(f"{path} pairs {len(source)} source with {len(target)} target keypoints")
        pairs.append(
            Pair(
                name=path.stem,
                category=category,
                source_image=root / "JPEGImages" / category / names[0],
                target_image=root / "JPEGImages" / category / names[1],
                source_points=source,
                target_points=target,
                threshold_size=max(x2 - x1, y2 - y1),
            )
        )
    return _non_empty(pairs, folder)


def read_pfpascal(root: str | Path, split: str = "test") -> list[Pair]:
    """PF-PASCAL pairs from ``<root>/<split>_pairs_pf_pascal.csv``."""
    root = Path(root)
    table = root / f"{split}_pairs_pf_pascal.csv"
    if not table.is_file():
        raise FileNotFoundError(
            f"no {table.name} in {root}; give as ROOT the PF-dataset-PASCAL folder holding the weakalign pair "
            "lists (test_pairs_pf_pascal.csv)"
        )
    pairs = []
    with table.open(newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle)):
            if row_number == 0 and row and row[0].strip().lower() == "source_image":
                continue  # header
            if not row:
                continue
            if len(row) < 7:
                raise DiTFInputError(
                    f"{table} row {row_number + 1} has {len(row)} columns; expected 7 "
                    "(source_image, target_image, class, XA, YA, XB, YB)"
                )
            source = _coords(row[3], row[4], table, row_number)
            target = _coords(row[5], row[6], table, row_number)
            if source.shape != target.shape:
                counts = f"{len(source)} source but {len(target)} target points"
                raise DiTFInputError(f"{table} row {row_number + 1}: {counts}")
            pairs.append(
                Pair(
                    name=f"{Path(row[0]).stem}-{Path(row[1]).stem}",
                    category=_pascal_class(row[2], table, row_number),
                    source_image=_image_path(root, row[0]),
                    target_image=_image_path(root, row[1]),
                    source_points=source,
                    target_points=target,
                    threshold_size=None,
                )
            )
    return _non_empty(pairs, table)


def read_ap10k(root: str | Path, split: str = "test") -> list[Pair]:
    """AP-10K pairs of ``split`` (e.g. "test", "test_cross_species", "test_cross_family")."""
    root = Path(root)
    folder = _existing_dir(root / "PairAnnotation" / split, "AP-10K pair annotations")
    pairs = []
    for path in sorted(folder.glob("*.json")):
        data = _read_json(path)
        if "src_json_path" not in data or "trg_json_path" not in data:
            raise DiTFInputError(f"{path} lacks src_json_path / trg_json_path; is this an AP-10K pair file?")
        source_json, target_json = _ap10k_path(root, data["src_json_path"]), _ap10k_path(root, data["trg_json_path"])
        source, target = _read_json(source_json), _read_json(target_json)
        try:
            source_kps = torch.tensor(source["keypoints"], dtype=torch.float32).reshape(-1, 3)
            target_kps = torch.tensor(target["keypoints"], dtype=torch.float32).reshape(-1, 3)
            _, _, box_w, box_h = (float(v) for v in target["bbox"])
        except KeyError as error:
            raise DiTFInputError(f"an annotation of {path.name} lacks the AP-10K field {error}") from None
        if source_kps.shape != target_kps.shape:
            raise DiTFInputError(f"{source_json} and {target_json} hold different numbers of keypoints")
        visible = (source_kps[:, 2] > 0) & (target_kps[:, 2] > 0)
        category = path.stem.split(":", 1)[1] if ":" in path.stem else str(source.get("name", "all"))
        pairs.append(
            Pair(
                name=path.stem,
                category=category,
                source_image=_jpeg_for(source_json),
                target_image=_jpeg_for(target_json),
                source_points=source_kps[visible, :2],
                target_points=target_kps[visible, :2],
                threshold_size=max(box_w, box_h),
            )
        )
    return _non_empty(pairs, folder)


READERS = {"spair": read_spair, "pfpascal": read_pfpascal, "ap10k": read_ap10k}


def _points(values, path: Path) -> torch.Tensor:
    points = torch.tensor(values, dtype=torch.float32).reshape(-1, 2)
    if not torch.isfinite(points).all():
        raise DiTFInputError(f"{path} has non-finite keypoints")
    return points


def _coords(xs: str, ys: str, table: Path, row_number: int) -> torch.Tensor:
    try:
        x = [float(v) for v in xs.split(";") if v.strip()]
        y = [float(v) for v in ys.split(";") if v.strip()]
    except ValueError:
        raise DiTFInputError(f"{table} row {row_number + 1}: coordinates must be ';'-separated numbers") from None
    if len(x) != len(y):
        raise DiTFInputError(f"{table} row {row_number + 1}: {len(x)} x but {len(y)} y coordinates")
    return torch.tensor(list(zip(x, y)), dtype=torch.float32).reshape(-1, 2)


def _pascal_class(value: str, table: Path, row_number: int) -> str:
    value = value.strip()
    if value in PASCAL_CLASSES:
        return value
    try:
        index = int(float(value))
    except ValueError:
        index = 0
    if not 1 <= index <= len(PASCAL_CLASSES):
        raise DiTFInputError(f"{table} row {row_number + 1}: class {value!r} is neither 1..20 nor a PASCAL class name")
    return PASCAL_CLASSES[index - 1]


def _image_path(root: Path, name: str) -> Path:
    for base in (root.parent, root):
        if (base / name).is_file():
            return base / name
    return root / "JPEGImages" / Path(name).name  # best guess; the harness reports it if missing


def _ap10k_path(root: Path, stored: str) -> Path:
    parts = Path(stored).parts
    if "ImageAnnotation" in parts:
        return root.joinpath(*parts[parts.index("ImageAnnotation") :])
    return root / stored


def _jpeg_for(annotation: Path) -> Path:
    parts = list(annotation.parts)
    parts[len(parts) - 1 - parts[::-1].index("ImageAnnotation")] = "JPEGImages"
    return Path(*parts).with_suffix(".jpg")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} is missing; check the dataset folder (ROOT)")
    with path.open() as handle:
        return json.load(handle)


def _existing_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"no {what} at {folder}; check the dataset folder (ROOT) and --split")
    return folder


def _non_empty(pairs: list[Pair], where: Path) -> list[Pair]:
    if not pairs:
        raise DiTFInputError(f"no pairs found in {where}")
    return pairs
