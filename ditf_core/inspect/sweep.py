"""The per-layer sweep: which blocks carry massive activations, in which channels, how stable across images.

:func:`sweep_captures` works on captures from any host (one early-exit pass that captured every block).
:func:`sweep_pipeline` is the thin model-side layer for a :class:`~ditf_core.DiTFPipeline`. Sweeps are cached per
model (:class:`SweepCache`: a bounded in-memory LRU, optionally mirrored to a folder of safetensors files; nothing
is pickled) so that :func:`massive_channels_for` can answer "which channels to discard at block k" without
running the model again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from ..families import family_for
from ..outputs import atomic_path
from ..recipe import EnsembleCapture
from .analysis import (
    MASSIVE_RATIO,
    channel_ratios,
    check_ratio,
    gate_alignment,
    gate_magnitude,
    massive_frequency,
    number,
)

SWEEP_FORMAT = 1


@dataclass(frozen=True, eq=False)  # tensors inside: compare sweeps field by field, not with ==
class LayerSweep:
    """Massive-activation statistics of every captured block.

    layers: captured global block indices, ascending (L of them). ratios: [L, C] channel ratio (median |h| over
    the tokens of all images / map median). frequency: [L, C] fraction of the images in which the channel is
    massive on its own. gates: [L, C] mean |gate| of each block's attention-branch AdaLN-zero gate.
    ratio: the massive threshold; min_fraction: how often a channel must be massive to count as stable;
    images: how many images the sweep saw.
    """

    layers: tuple[int, ...]
    ratios: torch.Tensor
    frequency: torch.Tensor
    gates: torch.Tensor
    ratio: float = MASSIVE_RATIO
    min_fraction: float = 0.5
    images: int = 1

    def row(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"block {layer} is not in this sweep (it covers blocks {list(self.layers)})")
        return self.layers.index(layer)

    def channels(self, layer: int) -> list[int]:
        """Massive channels at ``layer`` by the rule on all images' tokens, largest first."""
        ratio = self.ratios[self.row(layer)]
        order = _by_ratio(ratio)
        return order[ratio[order] >= self.ratio].tolist()

    def stable_channels(self, layer: int) -> list[int]:
        """Channels massive in at least ``min_fraction`` of the images (ordered as :meth:`channels`, then the rest
        by ratio): the set ``discard="auto"`` can reuse for every image."""
        row = self.row(layer)
        order = _by_ratio(self.ratios[row])
        frequency = self.frequency[row, order]
        return order[(frequency >= self.min_fraction) & (frequency > 0)].tolist()

    @cached_property
    def massive_layers(self) -> list[int]:
        """Blocks whose input has at least one massive channel."""
        return [layer for layer in self.layers if self.channels(layer)]

    @property
    def first_massive_layer(self) -> int | None:
        layers = self.massive_layers
        return layers[0] if layers else None

    @property
    def writer_block(self) -> int | None:
        """The block whose residual update first carries the massive values (block j - 1 when j is the first
        massive layer), when the sweep captured it; None otherwise (or when they come from the embedding)."""
        first = self.first_massive_layer
        return first - 1 if first is not None and first - 1 in self.layers else None

    def writer_gate(self, k: int | None = None) -> dict | None:
        """Gate alignment of the writer block's gate with the first massive layer's channels (paper Fig. 4)."""
        writer = self.writer_block
        if writer is None:
            return None
        return gate_alignment(self.gates[self.row(writer)], self.channels(writer + 1), k=k, block=writer)

    def to_dict(self, gate_k: int | None = None) -> dict:
        """The JSON form (see the README's report keys, ``sweep``)."""
        per_layer = []
        for row, layer in enumerate(self.layers):
            channels = self.channels(layer)
            seen = torch.nonzero(self.frequency[row] > 0).flatten().tolist()
            seen.sort(key=lambda c: (-float(self.frequency[row, c]), -float(self.ratios[row, c])))
            per_layer.append({
                "layer": layer,
                "channels": channels,
                "ratios": [number(self.ratios[row, c]) for c in channels],
                "max_ratio": number(self.ratios[row].max()),
                "stable_channels": self.stable_channels(layer),
                "stability": {"channels": seen, "fractions": [number(self.frequency[row, c]) for c in seen]},
            })
        return {
            "layers": list(self.layers),
            "ratio": self.ratio,
            "min_fraction": self.min_fraction,
            "images": self.images,
            "massive_layers": self.massive_layers,
            "first_massive_layer": self.first_massive_layer,
            "writer_block": self.writer_block,
            "writer_gate": self.writer_gate(gate_k),
            "per_layer": per_layer,
        }

    def save(self, path: str | Path, key: SweepKey | None = None) -> Path:
        """Write a safetensors file: tensors layers/ratios/frequency/gates, JSON metadata under ``ditf_sweep``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": SWEEP_FORMAT, "ratio": self.ratio, "min_fraction": self.min_fraction, "images": self.images,
                "key": asdict(key) if key is not None else None}
        tensors = {"layers": torch.tensor(self.layers, dtype=torch.int64), "ratios": self.ratios.contiguous(),
                   "frequency": self.frequency.contiguous(), "gates": self.gates.contiguous()}
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata={"ditf_sweep": json.dumps(meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerSweep:
        sweep, _ = _load(Path(path))
        return sweep


def sweep_captures(
    captures: Mapping[int, EnsembleCapture], *, ratio: float = MASSIVE_RATIO, min_fraction: float = 0.5
) -> LayerSweep:
    """The sweep over captured blocks ``{layer: EnsembleCapture}`` (hidden [B, N, C], modulation [B, C] each)."""
    ratio = check_ratio(ratio, "ratio")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float)) or not 0 < min_fraction <= 1:
        raise ValueError(
            f"min_fraction must be in (0, 1] (share of images a channel must be massive in), got {min_fraction!r}"
        )
    if not captures:
        raise ValueError("no captured blocks: capture at least one layer (for a sweep, all of them)")
    layers = tuple(sorted(captures))
    ratios, frequency, gates = [], [], []
    for layer in layers:
        capture = captures[layer]
        hidden = capture.hidden
        if hidden.ndim != 3:
            raise ValueError(f"capture of block {layer}: hidden must be [B, N, C], got {list(hidden.shape)}")
        pooled, massive = channel_ratios(hidden, ratio)
        ratios.append(pooled)
        if hidden.shape[0] == 1:  # one image: its own rule is the pooled rule
            frequency.append(massive.float())
        else:
            frequency.append(massive_frequency(hidden, ratio))
        gates.append(gate_magnitude(capture.modulation.gate))
    images = int(captures[layers[0]].hidden.shape[0])
    return LayerSweep(layers, torch.stack(ratios), torch.stack(frequency), torch.stack(gates), ratio,
                      float(min_fraction), images)


def sweep_pipeline(
    pipeline,
    images,
    *,
    ratio: float = MASSIVE_RATIO,
    min_fraction: float = 0.5,
    cache: SweepCache | None = None,
    micro_batch: int | None = None,
    progress=None,
    **settings,
) -> LayerSweep:
    """Full-depth sweep of ``pipeline`` on ``images``: ONE early-exit pass per micro-batch captures every block.

    settings: t, ensemble, resolution, seed, prompt, guidance (see :meth:`DiTFPipeline.settings`). The result is
    stored in ``cache`` (default: the process-wide :data:`DEFAULT_CACHE`).
    """
    run = pipeline.capture(images, layers=range(pipeline.depth), micro_batch=micro_batch, progress=progress, **settings)
    sweep = sweep_captures(run.layers, ratio=ratio, min_fraction=min_fraction)
    (DEFAULT_CACHE if cache is None else cache).put(sweep_key(pipeline.transformer, run.settings, ratio), sweep)
    return sweep


@dataclass(frozen=True)
class SweepKey:
    """What a cached sweep depends on: the model (see :func:`model_key`) and the capture settings."""

    model: str
    t: float
    resolution: int
    ensemble: int
    seed: int
    prompt: str
    guidance: float
    ratio: float

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def sweep_key(model: nn.Module | str, settings, ratio: float = MASSIVE_RATIO) -> SweepKey:
    """The cache key of a sweep of ``model`` (a transformer, or a host's own model key) with ``settings``
    (an ExtractSettings or a mapping with t, resolution, ensemble, seed, prompt, guidance)."""
    get = settings.get if isinstance(settings, Mapping) else lambda name, default=None: getattr(settings, name, default)
    return SweepKey(model=model if isinstance(model, str) else model_key(model), t=float(get("t")),
                    resolution=int(get("resolution")), ensemble=int(get("ensemble")), seed=int(get("seed", 0)),
                    prompt=str(get("prompt", "")), guidance=float(get("guidance", 3.5)), ratio=float(ratio))


class SweepCache:
    """Sweeps by :class:`SweepKey`: at most ``max_entries`` in memory (least recently used dropped first), and,
    when ``directory`` is given, one ``sweep-<digest>.safetensors`` file per key there as well."""

    def __init__(self, max_entries: int = 16, directory: str | Path | None = None) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self.directory = Path(directory) if directory is not None else None
        self._entries: OrderedDict[SweepKey, LayerSweep] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: SweepKey, sweep: LayerSweep) -> Path | None:
        """Store ``sweep``; returns the file written, if the cache has a directory."""
        with self._lock:
            self._entries[key] = sweep
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        if self.directory is not None:
            return sweep.save(self.directory / f"sweep-{key.digest()}.safetensors", key)
        return None

    def get(self, key: SweepKey) -> LayerSweep | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        path = self.directory / f"sweep-{key.digest()}.safetensors" if self.directory is not None else None
        if path is not None and path.is_file():
            sweep, _ = _load(path)
            self.put(key, sweep)
            return sweep
        return None

    def find(self, model: str, **settings) -> LayerSweep | None:
        """The most recently stored sweep of ``model`` whose key matches every given setting (e.g. t=0.26)."""
        unknown = set(settings) - set(SweepKey.__dataclass_fields__) - {"model"}
        if unknown:
            raise TypeError(f"unknown sweep setting(s) {sorted(unknown)}; use {sorted(SweepKey.__dataclass_fields__)}")

        def matches(key: SweepKey) -> bool:
            return key.model == model and all(getattr(key, name) == value for name, value in settings.items())

        with self._lock:
            for key in reversed(self._entries):
                if matches(key):
                    return self._entries[key]
        if self.directory is not None and self.directory.is_dir():
            files = sorted(self.directory.glob("sweep*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
            for path in files:
                sweep, key = _load(path)
                if key is not None and matches(key):
                    return sweep
        return None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


DEFAULT_CACHE = SweepCache()


def massive_channels_for(
    model: nn.Module | str, layer: int, *, cache: SweepCache | None = None, **settings
) -> list[int] | None:
    """Channels to discard at block ``layer`` according to the newest cached sweep of ``model``, or None when no
    sweep of it (matching ``settings``, e.g. t=0.26, resolution=640) covers that block.

    model: a diffusers transformer, or the key string a host used (:func:`model_key` for diffusers models).
    """
    key = model if isinstance(model, str) else model_key(model)
    sweep = (DEFAULT_CACHE if cache is None else cache).find(key, **settings)
    if sweep is None or layer not in sweep.layers:
        return None
    return sweep.stable_channels(layer)


def model_key(transformer: nn.Module) -> str:
    """``family:config_sha256:weights_sha256`` of a diffusers transformer.

    The config hash alone does not tell two models of one architecture apart (a fine-tune, or our planted demo
    DiT vs a clean one), so a weights digest is added: every AdaLN and attention-output bias in full plus a strided
    sample of ~4k values of each of their weights (cheap even for Flux.1: a few MB read).
    """
    family = family_for(transformer)
    fingerprint = family.fingerprint(transformer)
    return f"{fingerprint['family']}:{fingerprint['config_sha256']}:{weights_digest(transformer)}"


def weights_digest(transformer: nn.Module) -> str:
    family = family_for(transformer)
    digest = hashlib.sha256()
    for block in family.blocks(transformer):
        for layer in (family.adaln_linear(block), family.attention_out(block)):
            for parameter in (layer.weight, layer.bias):
                if parameter is None:
                    continue
                flat = parameter.detach().reshape(-1)
                if flat.numel() > 65536:
                    flat = flat[:: flat.numel() // 4096]
                digest.update(flat.to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


def _by_ratio(ratio: torch.Tensor) -> torch.Tensor:
    """Channel indices by ratio, largest first (inf first of all), ties by index."""
    finite = torch.nan_to_num(ratio, nan=0.0, posinf=torch.finfo(ratio.dtype).max)
    return torch.argsort(finite, descending=True, stable=True)


def _load(path: Path) -> tuple[LayerSweep, SweepKey | None]:
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no sweep file at {path}; write one with `python -m ditf_core inspect --sweep`")
    with safe_open(str(path), framework="pt") as handle:
        meta = (handle.metadata() or {}).get("ditf_sweep")
        if meta is None:
            raise ValueError(f"{path} is not a DiTF sweep file (no 'ditf_sweep' metadata)")
        tensors = {name: handle.get_tensor(name) for name in ("layers", "ratios", "frequency", "gates")}
    data = json.loads(meta)
    layers = tuple(int(x) for x in tensors["layers"])
    sweep = LayerSweep(layers, tensors["ratios"], tensors["frequency"], tensors["gates"], float(data["ratio"]),
                       float(data["min_fraction"]), int(data["images"]))
    key = SweepKey(**data["key"]) if data.get("key") else None
    return sweep, key
