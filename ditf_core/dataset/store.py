"""The content-addressed feature store: one safetensors file per image and extraction settings.

Layout (the evaluation cache and ``python -m ditf_core extract-dataset`` share it)::

    <store>/<settings digest>/settings.json                       the settings that key this folder
    <store>/<settings digest>/<path digest>-<stem>.safetensors    DiTFeatures of one image (batch of one)
    <store>/<settings digest>/index.json                          {image path: file name}, for extract-dataset

The settings digest hashes the extraction settings (model fingerprint, layer, t, ...), the path digest the image's
resolved path. Every file is written to a temporary name and renamed, so a crash, a kill or Ctrl-C never leaves a
half-written entry: a rerun extracts exactly the images whose file is missing (or stale: the image changed size).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..errors import DiTFInputError
from ..features import DiTFeatures
from ..image_files import open_image
from ..outputs import write_json

CACHE_FORMAT = 1
Extractor = Callable[[Image.Image], DiTFeatures]


def settings_digest(settings: dict) -> str:
    """A stable hash of extraction settings (JSON, sorted keys)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_folder(store: str | Path, settings: dict) -> Path:
    """The folder of ``store`` that holds the features extracted with ``settings``."""
    return Path(store) / settings_digest(settings)[:16]


def cache_path(store: str | Path, settings: dict, image_path: str | Path) -> Path:
    """Where the features of ``image_path`` extracted with ``settings`` live in ``store``."""
    image_path = Path(image_path)
    key = hashlib.sha256(str(image_path.resolve()).encode()).hexdigest()[:16]
    return settings_folder(store, settings) / f"{key}-{image_path.stem}.safetensors"


def read_cached(store: str | Path, settings: dict, image_path: str | Path) -> DiTFeatures | None:
    """The stored features of an image, or None when missing, damaged or stale (the image changed size)."""
    path = cache_path(store, settings, image_path)
    if not path.is_file():
        return None
    try:
        features = DiTFeatures.load(path)
    except Exception:  # a damaged entry is re-extracted, never trusted
        return None
    return features if _describes(image_path, tuple(features.mapping.image_size), features.batch) else None


def is_stored(store: str | Path, settings: dict, image_path: str | Path) -> bool:
    """Whether :func:`read_cached` would find the image, reading only the file's header (no tensor)."""
    from safetensors import safe_open

    path = cache_path(store, settings, image_path)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["ditf"])
            batch = handle.get_slice("features").get_shape()[0]
        size = tuple(meta["mapping"]["image_size"])
    except Exception:
        return False
    return _describes(image_path, size, batch)


def missing_images(store: str | Path, settings: dict, images: Iterable[str | Path]) -> list[Path]:
    """The images of ``images`` without a usable entry in ``store``, in their order."""
    return [Path(image) for image in images if not is_stored(store, settings, image)]


def extract_into(store: str | Path | None, settings: dict | None, image_path: Path, extractor: Extractor
                 ) -> DiTFeatures:
    """Extract one image file with ``extractor`` (``PIL.Image -> DiTFeatures``), check what it returned and, with a
    ``store``, write it there atomically."""
    image_path = Path(image_path)
    if not image_path.is_file():
        raise FileNotFoundError(f"image {image_path} is missing; check the dataset folder (ROOT) or the image list")
    image = open_image(image_path)
    features = extractor(image)
    if not isinstance(features, DiTFeatures) or features.batch != 1:
        raise TypeError(f"the extractor must return DiTFeatures of one image, got {type(features).__name__}")
    if tuple(features.mapping.image_size) != image.size:
        raise DiTFInputError(
            f"the extractor mapped {image_path} as {features.mapping.image_size} but the image is {image.size}; "
            "its mapping must describe the original image"
        )
    if store is not None:
        save_atomically(features, cache_path(store, settings, image_path), settings)
    return features


def save_atomically(features: DiTFeatures, path: Path, settings: dict) -> None:
    """Write ``features`` to ``path`` and, once per settings folder, the settings that key it (both atomically,
    through :mod:`ditf_core.outputs`: a temporary file with a random name beside it, then a rename)."""
    manifest = path.parent / "settings.json"
    if not manifest.exists():
        write_json(manifest, settings, default=str)
    features.to(torch.device("cpu")).save(path)


def update_index(store: str | Path, settings: dict, images: Sequence[Path]) -> Path:
    """Add ``images`` to the settings folder's index.json ({resolved image path: feature file name})."""
    path = settings_folder(store, settings) / "index.json"
    index = json.loads(path.read_text()) if path.is_file() else {}
    index.update({str(Path(image).resolve()): cache_path(store, settings, image).name for image in images})
    return write_json(path, index)


def extraction_settings(pipeline, model_path, options: dict) -> dict:
    """What keys a store folder: everything that changes the features, i.e. the model (fingerprint, path, dtype)
    and the resolved extraction settings. options: the keyword arguments given to ``pipeline.extract``."""
    names = ("layer", "t", "ensemble", "resolution", "seed", "mode", "prompt", "guidance")
    resolved = pipeline.settings(**{k: options[k] for k in names})
    return {
        "model": pipeline.describe(),
        "model_path": "demo" if model_path is None else str(Path(model_path).resolve()),
        "dtype": str(pipeline.dtype),
        "extract": {**resolved.__dict__, "discard": options["discard"]},
    }


def _describes(image_path, size: tuple[int, int], batch: int) -> bool:
    try:
        with Image.open(image_path) as image:  # reads the header only
            return size == image.size and batch == 1
    except Exception:
        return False
