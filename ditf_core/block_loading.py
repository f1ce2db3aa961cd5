"""Loading only the transformer blocks DiTF runs: blocks 0..k of a diffusers Flux / SD3 transformer.

Early exit runs blocks 0..k-1 and reads block k's own modulation layer; deeper blocks never run. For a capture at
block k, :func:`load_through_block` builds the model skeleton from the FULL config on the meta device (no memory, no
random init), keeps blocks 0..k in its block lists, reads exactly the tensors those modules hold from the
safetensors files (safetensors reads tensors one at a time; a shard that holds only deeper blocks is never opened)
and assigns them. Block k's forward pre-hook, the capture and the early exit are the ones of the full model.

The config stays the full model's, so the fingerprint (config hash, depth) and the family defaults (the default layer
comes from the full depth) are those of the full model: :func:`full_structure` gives the full block lists' shape.
Features are bitwise equal to the full model's for every layer <= k (tests/test_truncated_loading.py), so caches
keyed by the fingerprint are shared between truncated and full loads.

Layouts: a diffusers transformer folder (one weights file or an index of shards) and single .safetensors files in
the diffusers key layout or the original one (BFL / Stability), converted by diffusers' own converters. Two converter
habits cost one extra block in the original layouts, read and then dropped: Flux's needs at least one single block
(only when k is a double block), and SD3's treats the last joint block it sees as the model's final,
context-pre-only block (so block k + 1 is read too).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from .capture import check_layers
from .errors import DiTFInputError
from .families import family_for

# Per family: the block lists in execution order and the config entries that give their full lengths.
BLOCK_LISTS = {
    "flux": (("transformer_blocks", "num_layers"), ("single_transformer_blocks", "num_single_layers")),
    "sd3": (("transformer_blocks", "num_layers"),),
}
# The same lists' prefixes in the original (BFL / Stability) single-file layout.
ORIGINAL_LISTS = {"flux": ("double_blocks", "single_blocks"), "sd3": ("joint_blocks",)}
ORIGINAL_PREFIX = "model.diffusion_model."
# The transformer classes this module can truncate (the other families always load whole).
TRUNCATED_CLASSES = ("FluxTransformer2DModel", "SD3Transformer2DModel")
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = WEIGHTS_FILE + ".index.json"


def can_truncate(transformer_class: type[nn.Module]) -> bool:
    """Whether :func:`load_through_block` knows this diffusers transformer class's block lists and layouts."""
    return transformer_class.__name__ in TRUNCATED_CLASSES


def load_through_block(
    transformer_class: type[nn.Module],
    config_dir: Path,
    weights: Path,
    *,
    layers: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The transformer with blocks 0..k only, k = max(layers) (default: the family's default layer).

    transformer_class: FluxTransformer2DModel or SD3Transformer2DModel; config_dir: its diffusers config folder (the
    FULL model's); weights: a diffusers transformer folder or a single .safetensors file. Tensors are read straight
    onto ``device`` and cast to ``dtype``. A layer beyond the full depth is refused before anything is read.
    """
    with torch.device("meta"):
        model = transformer_class.from_config(transformer_class.load_config(str(config_dir)))
    family = family_for(model)
    full = full_structure(model)
    last = max(check_layers(full, family, layers)) if layers else family.defaults(full).layer
    kept = _keep_blocks(model, family.name, last + 1)
    needed = list(model.state_dict())
    state = read_weights(weights, needed, family.name, kept, device=device)
    model.load_state_dict({name: tensor.to(dtype) for name, tensor in state.items()}, strict=True, assign=True)
    return model.eval()


def full_structure(transformer: nn.Module):
    """A structural view of the FULL model (its block lists at the config's lengths, entries None), for
    ``family.blocks`` / ``split`` / ``defaults``; for a model this module did not truncate it has the same shape as
    the model itself."""
    lists = BLOCK_LISTS.get(family_for(transformer).name)
    if lists is None:
        return transformer
    return SimpleNamespace(**{name: [None] * int(transformer.config[key]) for name, key in lists})


def loaded_depth(transformer: nn.Module) -> int:
    """How many blocks the model holds (fewer than its config's depth when loaded by :func:`load_through_block`)."""
    return len(family_for(transformer).blocks(transformer))


def read_weights(
    weights: Path, names: Sequence[str], family: str, kept: Sequence[int], *, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors ``names`` (diffusers keys) from a transformer folder or single file, reading nothing else
    (except the converter's extra block of the original layouts, see the module docstring).

    kept: how many blocks of each block list (``BLOCK_LISTS[family]``) the model keeps.
    """
    from safetensors import safe_open

    names = list(names)
    by_file = _diffusers_files(weights, names)
    if by_file is not None:
        return _read(by_file, device)
    with safe_open(str(weights), framework="pt") as handle:
        stored = list(handle.keys())
    plain = {name.removeprefix(ORIGINAL_PREFIX): name for name in stored}
    if all(name in plain for name in names):  # a single file in the diffusers layout
        return _read({weights: {name: plain[name] for name in names}}, device)
    original = _original_subset(plain, family, kept)
    converted = _convert(family, _read({weights: original}, device))
    missing = [name for name in names if name not in converted]
    if missing:
        raise DiTFInputError(
            f"{weights.name} lacks {len(missing)} tensor(s) this model needs (e.g. {missing[0]}); is it a complete "
            "Flux / SD3 transformer file? Loading everything (--load-blocks all) reports what is wrong with it"
        )
    return {name: converted[name] for name in names}


def _keep_blocks(model: nn.Module, family: str, blocks: int) -> list[int]:
    """Cut the model's block lists after the first ``blocks`` blocks (in execution order); how many each keeps."""
    kept = []
    for name, _ in BLOCK_LISTS[family]:
        modules = getattr(model, name)
        keep = max(0, min(len(modules), blocks))
        setattr(model, name, modules[:keep])
        kept.append(keep)
        blocks -= keep
    return kept


def _diffusers_files(weights: Path, names: list[str]) -> dict[Path, dict[str, str]] | None:
    """{file: {name: stored name}} for a diffusers folder (sharded or not); None for a single file."""
    if not weights.is_dir():
        return None
    index = weights / WEIGHTS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = [name for name in names if name not in weight_map]
        if missing:
            raise DiTFInputError(f"{index} lacks {missing[0]} ({len(missing)} missing); is the folder complete?")
        by_file: dict[Path, dict[str, str]] = {}
        for name in names:
            by_file.setdefault(weights / weight_map[name], {})[name] = name
        return by_file
    if (weights / WEIGHTS_FILE).is_file():
        return {weights / WEIGHTS_FILE: {name: name for name in names}}
    raise DiTFInputError(
        f"{weights} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX}; only safetensors weights are loaded"
    )


def _read(by_file: dict[Path, dict[str, str]], device) -> dict[str, torch.Tensor]:
    """{name: tensor} read tensor by tensor; by_file maps each file to {name: name stored in that file}."""
    from safetensors import safe_open

    tensors = {}
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            stored = set(handle.keys())
            for name, stored_name in names.items():
                if stored_name not in stored:
                    raise DiTFInputError(f"{path.name} has no tensor {stored_name}; is the file complete?")
                tensors[name] = handle.get_tensor(stored_name)
    return tensors


def _original_subset(plain: dict[str, str], family: str, kept: Sequence[int]) -> dict[str, str]:
    """{name without prefix: stored name} of the original-layout tensors of kept blocks and of no block list."""
    limits = dict(zip(ORIGINAL_LISTS[family], kept))
    if family == "flux" and limits["single_blocks"] == 0:
        limits["single_blocks"] = 1  # diffusers' Flux converter cannot convert a checkpoint without single blocks
    if family == "sd3":
        limits["joint_blocks"] += 1  # so that block k converts as a full joint block (read, then dropped)
    subset = {}
    for name, stored in plain.items():
        head, _, rest = name.partition(".")
        if head in limits and int(rest.split(".", 1)[0]) >= limits[head]:
            continue
        subset[name] = stored
    return subset


def _convert(family: str, original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    convert = {"flux": convert_flux_transformer_checkpoint_to_diffusers,
               "sd3": convert_sd3_transformer_checkpoint_to_diffusers}[family]
    return convert(original)
