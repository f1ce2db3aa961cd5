"""Everything a command can check before it loads a model, and the load itself.

A typo should cost a second, not a model load: :func:`plan_model` resolves and checks the model files (configs and
the header of every .safetensors file, never the weights; the transformer is built on the meta device for its
structure), the device and the conditioning, and :func:`check_extract_options` / :func:`check_layer_list` check the
settings against that structure. Every problem is a :class:`~ditf_core.errors.DiTFInputError` whose message names
the option. :func:`load_planned` then does the slow part; given the layers a command captures, it reads only the
transformer blocks up to the deepest one (``--load-blocks auto``, see :mod:`ditf_core.block_loading`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .capture import check_layers
from .cli_args import DEFAULT_LAYER, extract_kwargs, parse_index_list
from .conditioning import FixedPromptEncoder
from .errors import DiTFInputError
from .families import DiTFamily, family_for
from .image_files import open_image
from .loading import PROMPT_FAMILIES, ModelFiles, find_model_files, probe_model
from .pipeline import DiTFPipeline, resolve_discard
from .recipe import check_timestep
from .wording import plural

RESOLUTION_RANGE = (16, 4096)  # as the nodes' resolution input


@dataclass(frozen=True)
class ModelPlan:
    """The model a command will load, checked. files None: the built-in demo DiT. skeleton: the transformer on
    the meta device (structure, no weights). text_embeds: the --text-embeds conditioning, already read.
    load_blocks: --load-blocks ("all" for a command without the option)."""

    files: ModelFiles | None
    skeleton: nn.Module
    family: DiTFamily
    device: torch.device | None
    dtype: torch.dtype | None
    text_embeds: FixedPromptEncoder | None
    load_blocks: str = "all"

    @property
    def encodes_prompts(self) -> bool:
        return self.text_embeds is None and self.files is not None and self.files.text_folder is not None


def check_images(paths: Sequence[Path]) -> list:
    """Every image decoded (RGB PIL images), or an error naming the first unusable file."""
    return [open_image(path) for path in paths]


def plan_model(args, *, demo_by_default: bool = False) -> ModelPlan:
    """Check the model options (--model / --demo, --vae, --config, --text-embeds, --device, --dtype, --prompt)."""
    check_model_choice(args, demo_by_default=demo_by_default)
    device = check_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.model is None:
        for option, value in (("--vae", args.vae), ("--config", args.config)):
            if value is not None:
                raise DiTFInputError(f"{option} goes with --model (a transformer file or folder); the demo DiT has "
                                     "its own VAE: leave it out")
        files, skeleton = None, _demo_skeleton()
    else:
        for option, value in (("--model", args.model), ("--vae", args.vae), ("--config", args.config)):
            _check_exists(option, value)
        probe = probe_model(find_model_files(args.model, vae=args.vae, config=args.config,
                                             text_encoders=not args.no_text_encoders and args.text_embeds is None))
        files, skeleton = probe.files, probe.skeleton
    family = family_for(skeleton)
    text_embeds = _read_text_embeds(args.text_embeds, skeleton, family) if args.text_embeds is not None else None
    plan = ModelPlan(files, skeleton, family, device, dtype, text_embeds, getattr(args, "load_blocks", "all"))
    _check_prompt(args, plan)
    return plan


def check_model_choice(args, *, demo_by_default: bool = False) -> None:
    """Exactly one of --model / --demo (none means --demo only where ``demo_by_default``)."""
    if args.model is not None and args.demo:
        raise DiTFInputError("give either --model PATH or --demo, not both")
    if args.model is None and not (args.demo or demo_by_default):
        raise DiTFInputError("no model: give --model PATH (a diffusers folder or .safetensors transformer), or --demo "
                             "for the tiny random-weight demo DiT")


def check_device(text: str | None) -> torch.device | None:
    """--device as a torch device that this machine has (None: the default, CUDA when available)."""
    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DiTFInputError(f"--device {text!r} is not a device name torch knows; use cpu, cuda, cuda:1 or "
                             "mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DiTFInputError(f"--device {text}: this torch sees no CUDA GPU (no NVIDIA driver, or a CPU-only torch "
                                 "build); use --device cpu, or leave --device out")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DiTFInputError(f"--device {text}: this machine has {plural(count, 'CUDA GPU')} "
                                 f"(cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DiTFInputError(f"--device {text}: MPS (Apple GPU) is not available here; use --device cpu")
    return device


def check_extract_options(args, plan: ModelPlan, image_sizes: Sequence[tuple[int, int]]) -> dict:
    """The extraction options checked against the model and the images' sizes (width, height); returns
    ``DiTFPipeline.extract`` keyword arguments. Covers --layer, --t, --ensemble, --resolution, --seed, --guidance,
    --micro-batch and --discard."""
    options = extract_kwargs(args)
    if options["layer"] is not None:
        check_layer_list([options["layer"]], plan, "--layer")
    check_sampling_options(args, plan, image_sizes)
    try:
        resolve_discard(options["discard"], [], plan.family.hidden_size(plan.skeleton))
    except (ValueError, TypeError) as error:
        raise DiTFInputError(f"--discard: {error}") from None
    return options


def check_sampling_options(args, plan: ModelPlan, image_sizes: Sequence[tuple[int, int]]) -> None:
    """--t, --ensemble, --resolution (range, and every image's latent through this model), --seed, --guidance,
    --micro-batch."""
    if args.t is not None:
        _named("--t", check_timestep, args.t)
    check_minimums(("--ensemble", args.ensemble, 1), ("--micro-batch", args.micro_batch, 1), ("--seed", args.seed, 0))
    if not math.isfinite(args.guidance):
        raise DiTFInputError(f"--guidance must be a finite number, got {args.guidance}")
    check_resolution(args.resolution, plan, image_sizes)


def check_minimums(*options: tuple[str, int | None, int]) -> None:
    """Each (option, value, lowest allowed) with a value given is at least that low."""
    for option, value, low in options:
        if value is not None and value < low:
            raise DiTFInputError(f"{option} must be at least {low}, got {value}")


def check_resolution(resolution: int | None, plan: ModelPlan, image_sizes: Sequence[tuple[int, int]]) -> int:
    """--resolution (None: the family default) in range, and every image's latent (width, height) through this
    model (patch multiples, position-embedding limits); returns the resolution."""
    resolution = plan.family.defaults(plan.skeleton).resolution if resolution is None else resolution
    low, high = RESOLUTION_RANGE
    if not low <= resolution <= high:
        raise DiTFInputError(f"--resolution must be between {low} and {high} pixels (the long side fed to the "
                             f"model), got {resolution}")
    for size in image_sizes:  # what this model takes (SD3's position embeddings, the token bound), per image
        try:
            plan.family.check_resolution(plan.skeleton, size, resolution, name="--resolution")
        except ValueError as error:
            raise DiTFInputError(str(error)) from None
    return resolution


def check_layer_list(layers: Sequence[int], plan: ModelPlan, option: str) -> list[int]:
    """Block indices checked against the model's depth, in the order given without repeats; -1 stands for the
    family default."""
    default = plan.family.defaults(plan.skeleton).layer
    layers = list(dict.fromkeys(default if layer == DEFAULT_LAYER else layer for layer in layers))
    try:
        check_layers(plan.skeleton, plan.family, layers)
    except (ValueError, TypeError) as error:
        raise DiTFInputError(f"{option}: {str(error).rstrip('.')}, or -1 for the family default ({default})") from None
    return layers


def captured_layers(options: dict, plan: ModelPlan) -> list[int]:
    """The block an extraction with ``options`` (:func:`check_extract_options`' result) captures, for
    :func:`load_planned`: --layer, or the family's default layer."""
    return [plan.family.defaults(plan.skeleton).layer if options["layer"] is None else options["layer"]]


def parse_layers(text: str | None, plan: ModelPlan, option: str = "--layers") -> list[int] | None:
    """--layers text -> checked block indices in the order given, or None when left out."""
    return None if text is None else check_layer_list(parse_index_list(text, option), plan, option)


def check_distinct_stems(paths: Sequence[Path], output: str, fix: str) -> None:
    """Outputs named after each path's name without the suffix (``output``, with ``{}`` for it) must not collide:
    ``a.png`` and ``other/a.jpg`` would both write ``a.safetensors``. ``fix``: what to do instead."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DiTFInputError(f"{seen[path.stem]} and {path} would both write {output.format(path.stem)}; {fix}")
        seen[path.stem] = path


def check_output_file(path: Path, option: str, example: str) -> None:
    """``option`` names a file this run can write (not a folder; its nearest existing folder writable)."""
    if path.is_dir():
        raise DiTFInputError(f"{option} {path} is a folder; give a file name like {example}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DiTFInputError(f"{option} {path}: cannot write there; give a file in a folder you can write to")


def check_folder_option(path: Path, option: str, alternative: str = "") -> None:
    """``option`` names a folder, or nothing yet (then it is created), not a file."""
    if path.exists() and not path.is_dir():
        raise DiTFInputError(f"{option} {path} is a file, not a folder; give a folder{' ' + alternative if alternative else ''}")


def load_planned(plan: ModelPlan, layers: Sequence[int] | None = None) -> DiTFPipeline:
    """The slow part: read the weights of the planned model (or build the demo DiT, always whole).

    layers: the checked blocks the command captures (early exit: no deeper block runs); with --load-blocks auto
    only blocks 0..max(layers) are read. None: the command runs every block (a sweep), so every block is read.
    """
    if plan.files is None:
        pipeline = DiTFPipeline.demo(device=plan.device, dtype=plan.dtype)
    else:
        blocks = plan.load_blocks if layers else "all"
        pipeline = DiTFPipeline.from_files(plan.files, device=plan.device, dtype=plan.dtype, load_blocks=blocks,
                                           layers=layers)
    if plan.text_embeds is not None:
        pipeline.prompt_encoder = plan.text_embeds
    return pipeline


def _check_prompt(args, plan: ModelPlan) -> None:
    if not (args.prompt or "").strip() or plan.encodes_prompts:  # None: the command picks its default prompt
        return
    if plan.text_embeds is not None:
        reason = "--text-embeds gives fixed precomputed conditioning, whatever the prompt"
    elif args.no_text_encoders:
        reason = "--no-text-encoders turns them off (zero conditioning)"
    elif plan.files is None:
        reason = "the demo DiT has none (zero conditioning)"
    elif plan.family.name not in PROMPT_FAMILIES:
        reason = (f"DiTF encodes prompts only for {' and '.join(PROMPT_FAMILIES)} models; this {plan.family.label} "
                  "runs on zero conditioning")
    else:
        reason = f"{args.model} has none (only a pipeline folder with text_encoder*/ folders has them)"
    raise DiTFInputError(f"--prompt needs the model's text encoders, but {reason}; give --model a diffusers pipeline "
                         "folder with its text encoders, or precompute the conditioning with --text-embeds FILE, or "
                         "leave --prompt out")


def _read_text_embeds(path: Path, skeleton: nn.Module, family: DiTFamily) -> FixedPromptEncoder:
    _check_exists("--text-embeds", path)
    try:
        encoder = FixedPromptEncoder.from_file(path)
        family.check_conditioning(skeleton, encoder.text_embeds, encoder.pooled)
    except (ValueError, TypeError) as error:
        raise DiTFInputError(f"--text-embeds: {error}") from None
    return encoder


def _check_exists(option: str, path: Path | None) -> None:
    if path is not None and not path.exists():
        raise DiTFInputError(f"{option} {path} does not exist; nothing is downloaded: give a local path")


def _named(option: str, check, *args):
    """``check(*args)``, its ValueError / TypeError re-raised with the option's name in front."""
    try:
        return check(*args)
    except (ValueError, TypeError) as error:
        raise DiTFInputError(f"{option}: {error}") from None


def _demo_skeleton() -> nn.Module:
    from diffusers import FluxTransformer2DModel

    from .demo_model import TINY_FLUX_CONFIG

    with torch.device("meta"):
        return FluxTransformer2DModel(**TINY_FLUX_CONFIG)
