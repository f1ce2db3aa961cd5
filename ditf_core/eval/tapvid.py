"""TAP-Vid-DAVIS point tracking: a safe reader of the release, tapnet's query sampling, the harness.

The release (``tapvid_davis.pkl``) is a pickle: ``{video name: {"video": uint8 [T, H, W, 3], "points": float32
[N, T, 2] (x, y in [0, 1]), "occluded": bool [N, T]}}``. Unpickling can run arbitrary code, so it is read with
:class:`SafeUnpickler`, which resolves only the handful of numpy globals that rebuild arrays and scalars
(``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer``) and ``_codecs.encode`` (protocol-2
pickles store raw bytes through it); any other global is refused. A converted ``.npz`` is read with
``allow_pickle=False``: keys ``<video>/video``, ``<video>/points``, ``<video>/occluded`` (:func:`save_npz` writes
it from the pickle).

Protocol (tapnet's ``create_davis_dataset``, ``compute_tapvid_metrics``): ground truth in 256 x 256 raster
coordinates (normalised x, y times 256); queries "first" (each point's first visible frame) or "strided" (every
5th frame where the point is visible, tracked both ways). Our choices: the model sees the frames as stored in the
file (the recipe resizes them); a normalised coordinate u maps to our pixel x = u * W - 0.5 (pixel centres at
integers) and back; in "strided" mode the features of each frame are extracted twice (a forward and a backward pass)
rather than kept.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import DiTFInputError
from ..outputs import atomic_path
from ..video import FeatureSource, TrackSettings, track_queries
from ..wording import first_line
from .video_metrics import tapvid_metrics

METRIC_SIZE = 256
QUERY_STRIDE = 5
KEYS = ("video", "points", "occluded")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, tuples, strings and numbers; refuses every other global."""

    def find_class(self, module: str, name: str):
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a TAP-Vid file holds only numpy arrays, dicts, lists and numbers"
            )
        return allowed[module, name]


def load_tapvid(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The TAP-Vid-DAVIS release (``.pkl``, read safely) or its ``.npz`` conversion, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TAP-Vid file at {path} (tapvid_davis.pkl from the TAP-Vid release, or an .npz)")
    try:
        data = _read_npz(path) if path.suffix == ".npz" else _read_pickle(path)
    except Exception as error:  # a foreign or damaged file: pickle, zipfile and numpy raise many kinds of errors
        raise DiTFInputError(f"{path} is not a readable TAP-Vid file ({first_line(error)}); give tapvid_davis.pkl "
                             "from the TAP-Vid release or its .npz conversion") from None
    return _check_dataset(data, path)


def save_npz(data: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """Write a dataset as the ``.npz`` :func:`load_tapvid` reads (no pickle inside)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise DiTFInputError(f"{path}: the converted file needs the .npz suffix (numpy would add it)")
    with atomic_path(path) as temporary:
        arrays = {f"{video}/{key}": np.asarray(entry[key]) for video, entry in data.items() for key in KEYS}
        np.savez(temporary, **arrays)
    return path


def sample_queries(points: np.ndarray, occluded: np.ndarray, mode: str) -> dict[str, np.ndarray]:
    """tapnet's ``sample_queries_first`` / ``sample_queries_strided`` on one video, 256 x 256 raster coordinates.

    points [N, T, 2] normalised (x, y); occluded [N, T]. Returns query_points [Q, 3] (t, y, x), target_points
    [Q, T, 2] (x, y), occluded [Q, T], track [Q] (index of the ground-truth point).
    """
    target = points * np.array([METRIC_SIZE, METRIC_SIZE])
    if mode == "first":
        track = np.nonzero(np.sum(~occluded, axis=1) > 0)[0]
        frame = np.array([np.nonzero(~occluded[i])[0][0] for i in track], dtype=np.int64)
    elif mode == "strided":
        pairs = [(i, t) for t in range(0, occluded.shape[1], QUERY_STRIDE) for i in np.nonzero(~occluded[:, t])[0]]
        track = np.array([i for i, _ in pairs], dtype=np.int64)
        frame = np.array([t for _, t in pairs], dtype=np.int64)
    else:
        raise DiTFInputError(f"query mode must be 'first' or 'strided', got {mode!r}")
    queries = np.stack([frame, target[track, frame, 1], target[track, frame, 0]], axis=-1) if len(track) else (
        np.zeros((0, 3)))
    return {"query_points": queries, "target_points": target[track], "occluded": occluded[track], "track": track}


def evaluate_tapvid(
    data: Mapping[str, Mapping[str, np.ndarray]],
    source: FeatureSource,
    *,
    mode: str = "first",
    settings: TrackSettings | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Track every video's queries and score them. Returns {"summary": mean over videos, "videos": {name: metrics}}."""
    videos = {}
    for name, entry in data.items():
        queries = sample_queries(entry["points"], entry["occluded"], mode)
        if len(queries["query_points"]) == 0:
            continue
        frames = entry["video"]
        height, width = frames.shape[1:3]

        def features_at(t: int, frames=frames):
            pixels = torch.from_numpy(np.ascontiguousarray(frames[t])).permute(2, 0, 1)[None].float() / 255.0
            return source(pixels)

        query = queries["query_points"]  # (t, y, x) in 256 space -> (t, x, y) pixels of the stored frames
        ours = torch.tensor(np.stack([query[:, 0], query[:, 2] * width / METRIC_SIZE - 0.5,
                                      query[:, 1] * height / METRIC_SIZE - 0.5], axis=-1), dtype=torch.float32)
        ours[:, 1].clamp_(-0.5, width - 0.5)
        ours[:, 2].clamp_(-0.5, height - 0.5)
        tracks, visible = track_queries(features_at, frames.shape[0], ours, settings=settings,
                                        backward=mode == "strided",
                                        progress=None if progress is None else (lambda d, t, n=name: progress(n, d, t)))
        scale = np.array([METRIC_SIZE / width, METRIC_SIZE / height])
        predicted = (tracks.numpy() + 0.5) * scale
        videos[name] = tapvid_metrics(query, queries["occluded"], queries["target_points"], ~visible.numpy(),
                                      predicted, mode)
    names = next(iter(videos.values())).keys() if videos else ()
    summary = {key: float(np.mean([metrics[key] for metrics in videos.values()])) for key in names}
    return {"summary": summary, "videos": videos, "mode": mode}


def format_table(evaluation: dict) -> str:
    """Average Jaccard, <delta_avg, occlusion accuracy and the per-threshold numbers, in percent."""
    columns = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy",
               *(f"pts_within_{t}" for t in (1, 2, 4, 8, 16)))
    heads = ("AJ", "<d_avg", "OA", "<1", "<2", "<4", "<8", "<16")
    rows = [f"{'video':<22}" + "".join(f"{h:>8}" for h in heads)]
    for name, metrics in [*evaluation["videos"].items(), ("mean", evaluation["summary"])]:
        rows.append(f"{name:<22}" + "".join(f"{100 * metrics[c]:8.1f}" for c in columns))
    return "\n".join(rows)


def _read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        data: dict[str, dict] = {}
        for key in archive.files:
            video, _, field = key.rpartition("/")
            data.setdefault(video, {})[field] = archive[key]
    return data


def _read_pickle(path: Path):
    with path.open("rb") as handle:
        return SafeUnpickler(io.BufferedReader(handle)).load()


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The globals numpy's pickles name (numpy 1 writes ``numpy.core``, numpy 2 ``numpy._core``)."""
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray", "_reconstruct"] = multiarray._reconstruct
        allowed[f"{package}.multiarray", "scalar"] = multiarray.scalar
        allowed[f"{package}.numeric", "_frombuffer"] = numeric._frombuffer
    return allowed


def _check_dataset(data, path: Path) -> dict:
    if not isinstance(data, dict) or not data:
        raise DiTFInputError(f"{path} does not hold a TAP-Vid dataset (a dict of videos)")
    for name, entry in data.items():
        missing = [key for key in KEYS if not isinstance(entry, Mapping) or key not in entry]
        if missing:
            raise DiTFInputError(f"{path}: video {name!r} lacks {', '.join(missing)}")
        video, points, occluded = (np.asarray(entry[key]) for key in KEYS)
        if video.ndim != 4 or video.shape[-1] != 3 or points.ndim != 3 or occluded.shape != points.shape[:2] or (
                points.shape[1] != video.shape[0]):
            raise DiTFInputError(f"{path}: video {name!r} has video {video.shape}, points {points.shape}, occluded "
                                 f"{occluded.shape}; expected [T, H, W, 3], [N, T, 2], [N, T]")
    return {name: {key: np.asarray(entry[key]) for key in KEYS} for name, entry in data.items()}
