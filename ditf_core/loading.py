"""Loading real models for users, from local files only (nothing is downloaded, nothing is unpickled).

Accepted:
* a diffusers pipeline folder (``model_index.json`` with ``transformer/`` and ``vae/``; text encoders are used
  when present and ``text_encoders=True``, otherwise extraction uses zero conditioning);
* a diffusers transformer folder (``config.json`` of a Flux / SD3 transformer) plus ``vae=``;
* a single ``.safetensors`` transformer file (BFL / Stability / diffusers key layout) plus ``vae=``; its diffusers
  config comes from ``config=`` or, for the known releases, from the presets in ``ditf_core/configs``.

``load_blocks="auto"`` builds and reads only the transformer blocks an early-exit capture runs (0..k, k the deepest
of ``layers``, see :mod:`ditf_core.block_loading`); ``"all"`` (the default) loads the whole transformer.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .block_loading import load_through_block
from .errors import DiTFInputError, UnsupportedModelError
from .families import supported_families

CONFIGS = Path(__file__).parent / "configs"
LOAD_BLOCKS = ("auto", "all")
TRANSFORMER_CLASSES = ("FluxTransformer2DModel", "SD3Transformer2DModel")
NOT_LOCAL = "nothing is downloaded: give a local path"


def load_pipeline(
    path,
    *,
    vae=None,
    config=None,
    text_encoders: bool = True,
    device=None,
    dtype=None,
    load_blocks: str = "all",
    layers=None,
):
    """A :class:`~ditf_core.pipeline.DiTFPipeline` from local files (see the module docstring).

    load_blocks: "all" or "auto" (only blocks 0..max(layers); without ``layers`` through the family's default layer
    of the full model). A pipeline loaded with "auto" refuses deeper layers with a message saying to load "all".
    """
    from .pipeline import DiTFPipeline, resolve_device_dtype

    device, dtype = resolve_device_dtype(device, dtype)
    path = _existing(path, "model")
    blocks = dict(load_blocks=load_blocks, layers=layers, device=device)
    prompt_encoder = None
    if path.is_dir() and (path / "model_index.json").is_file():
        _check_pipeline_folder(path)
        transformer = load_transformer(path / "transformer", dtype=dtype, **blocks)
        vae_model = load_vae(vae if vae is not None else path / "vae", transformer=transformer)
        if text_encoders:
            prompt_encoder = load_prompt_encoder(path, transformer, dtype=dtype, device=device)
    else:
        transformer = load_transformer(path, config=config, dtype=dtype, **blocks)
        if vae is None:
            raise DiTFInputError(
                f"{path} holds only a transformer; also give its VAE (vae=... / --vae), a diffusers VAE folder, "
                "a pipeline folder with vae/, or a .safetensors VAE file"
            )
        vae_model = load_vae(vae, transformer=transformer)
    return DiTFPipeline(transformer, vae_model, prompt_encoder, device=device, dtype=dtype, name=path.name)


def load_transformer(path, *, config=None, dtype=torch.float32, load_blocks="all", layers=None, device="cpu"):
    """A diffusers Flux / SD3 transformer from a folder (``config.json``) or a single .safetensors file.

    load_blocks "auto": only blocks 0..max(layers), read straight onto ``device`` (see
    :func:`ditf_core.block_loading.load_through_block`); "all": the whole model, on the CPU.
    """
    if load_blocks not in LOAD_BLOCKS:
        raise DiTFInputError(f"load_blocks must be 'auto' or 'all', got {load_blocks!r}")
    path = _existing(path, "transformer")
    if path.is_dir():
        config_dir = path
    else:
        _check_safetensors(path)
        config_dir = _existing(config, "config") if config is not None else CONFIGS / transformer_preset(path)
    model_class = _transformer_class(_class_name(config_dir), config_dir)
    if load_blocks == "auto":
        return load_through_block(model_class, config_dir, path, layers=layers, dtype=dtype, device=device)
    if path.is_dir():
        return model_class.from_pretrained(str(path), **_local(dtype))
    return model_class.from_single_file(str(path), config=str(config_dir), **_local(dtype, safetensors=False))


def load_vae(path, *, transformer=None):
    """A diffusers ``AutoencoderKL`` (float32) from a folder, a pipeline folder's ``vae/`` or a .safetensors file."""
    from diffusers import AutoencoderKL

    path = _existing(path, "vae")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise DiTFInputError(f"{path} is not a diffusers VAE folder (no config.json)")
        return AutoencoderKL.from_pretrained(str(path), **_local())
    _check_safetensors(path)
    # Single-file VAEs carry no config: Flux and SD3 VAEs differ only in their latent normalisation.
    preset = "sd3-vae" if type(transformer).__name__.startswith("SD3") else "flux-vae"
    return AutoencoderKL.from_single_file(str(path), config=str(CONFIGS / preset), **_local(safetensors=False))


def load_prompt_encoder(folder: Path, transformer, *, dtype, device):
    """The pipeline's text encoders as a cached prompt encoder, or None when the folder has none."""
    from .conditioning import DiffusersPromptEncoder
    from .families import family_for

    if not any((folder / name).is_dir() for name in ("text_encoder", "text_encoder_2", "text_encoder_3")):
        return None
    family = family_for(transformer)
    index = json.loads((folder / "model_index.json").read_text())
    pipeline_class = _pipeline_class(index.get("_class_name", ""), family.name)
    with warnings.catch_warnings():
        # diffusers 0.42 renames torch_dtype to dtype; older releases (>= 0.32, which we support) know only torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        pipeline = pipeline_class.from_pretrained(str(folder), transformer=None, vae=None, **_local(dtype)).to(device)
    return DiffusersPromptEncoder(pipeline, family.name)


def transformer_preset(path: Path) -> str:
    """The preset config for a known single-file transformer release, judged from its tensor names."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = {key.removeprefix("model.diffusion_model.") for key in handle.keys()}
    if "double_blocks.0.img_attn.qkv.weight" in keys or "single_transformer_blocks.0.norm.linear.weight" in keys:
        double = _count(keys, "double_blocks.") or _count(keys, "transformer_blocks.")
        single = _count(keys, "single_blocks.") or _count(keys, "single_transformer_blocks.")
        if (double, single) != (19, 38):
            raise DiTFInputError(_unknown_variant(path, f"Flux with {double}+{single} blocks"))
        guided = "guidance_in.in_layer.weight" in keys or "time_text_embed.guidance_embedder.linear_1.weight" in keys
        return "flux-dev" if guided else "flux-schnell"
    if "joint_blocks.0.x_block.attn.qkv.weight" in keys or "transformer_blocks.0.norm1_context.linear.weight" in keys:
        depth = _count(keys, "joint_blocks.") or _count(keys, "transformer_blocks.")
        dual = "joint_blocks.0.x_block.attn2.qkv.weight" in keys or "transformer_blocks.0.attn2.to_q.weight" in keys
        presets = {(24, False): "sd3-medium", (38, False): "sd3.5-large", (24, True): "sd3.5-medium"}
        if (depth, dual) not in presets:
            raise DiTFInputError(_unknown_variant(path, f"SD3 with {depth} blocks"))
        return presets[(depth, dual)]
    raise UnsupportedModelError(
        f"{path} does not look like a Flux or SD3/SD3.5 transformer; supported: {supported_families()}"
    )


def _local(dtype=None, *, safetensors: bool = True) -> dict:
    """from_pretrained / from_single_file options: local files only, safetensors only, the dtype, and the
    memory-saving loader exactly when accelerate (which it needs) is installed."""
    from diffusers.utils import is_accelerate_available

    options = {"local_files_only": True, "low_cpu_mem_usage": is_accelerate_available()}
    if safetensors:
        options["use_safetensors"] = True
    if dtype is not None:
        options["torch_dtype"] = dtype
    return options


def _existing(path, what: str) -> Path:
    if path is None:
        raise DiTFInputError(f"no {what} path given")
    path = Path(path).expanduser()
    if not path.exists():
        raise DiTFInputError(
            f"{what} path {path} does not exist; {NOT_LOCAL} (a diffusers folder or a .safetensors file)"
        )
    return path


def _check_safetensors(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise DiTFInputError(
            f"{path.name}: only .safetensors weights are loaded (pickled .ckpt/.pt/.bin files can run code); "
            "convert it to safetensors first"
        )


def _check_pipeline_folder(folder: Path) -> None:
    if (folder / "transformer").is_dir():
        return
    pipeline = json.loads((folder / "model_index.json").read_text()).get("_class_name", "pipeline")
    if (folder / "unet").is_dir():
        raise UnsupportedModelError(
            f"{folder} is a {pipeline} (a UNet diffusion model, not a Diffusion Transformer); "
            f"supported: {supported_families()}"
        )
    raise DiTFInputError(f"{folder} is a {pipeline} folder without a transformer/ subfolder")


def _class_name(folder: Path) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise DiTFInputError(
            f"{folder} is not a diffusers model folder (no config.json / model_index.json with transformer/)"
        )
    return json.loads(config.read_text()).get("_class_name", "")


def _transformer_class(class_name: str, where: Path):
    if class_name not in TRANSFORMER_CLASSES:
        raise UnsupportedModelError(
            f"{where} holds a {class_name or 'model of unknown class'}; supported: {supported_families()}"
        )
    import diffusers

    return getattr(diffusers, class_name)


def _pipeline_class(class_name: str, family: str):
    import diffusers

    default = "FluxPipeline" if family == "flux" else "StableDiffusion3Pipeline"
    return getattr(diffusers, class_name if class_name.startswith(("Flux", "StableDiffusion3")) else default)


def _count(keys: set[str], prefix: str) -> int:
    indices = {key[len(prefix) :].split(".", 1)[0] for key in keys if key.startswith(prefix)}
    return len({index for index in indices if index.isdigit()})


def _unknown_variant(path: Path, found: str) -> str:
    return f"{path.name} is a {found}, not a known release; pass the diffusers config folder with config=/--config"
