"""Loading real models for users, from local files only (nothing is downloaded, nothing is unpickled).

Accepted:
* a diffusers pipeline folder (``model_index.json`` with ``transformer/`` and ``vae/``; text encoders are used
  when present and ``text_encoders=True``, otherwise extraction uses zero conditioning);
* a diffusers transformer folder (``config.json`` of a supported transformer class) plus ``vae=``;
* a single ``.safetensors`` transformer file (original / ComfyUI / diffusers key layout) plus ``vae=``, through
  diffusers' ``from_single_file`` (every supported family but PixArt, which diffusers cannot load that way); its
  diffusers config comes from ``config=`` or, for the known releases, from the presets in ``ditf_core/configs``
  (:mod:`ditf_core.releases` recognises the release).

Text encoders of pipeline folders are used for Flux.1 and SD3 / SD3.5; the other families run on zero conditioning,
precomputed embeddings (``--text-embeds``) or, in ComfyUI, a CONDITIONING input.

Three steps, so that a command line can check everything before the slow part: :func:`find_model_files` resolves
what the user named into the files of each part, :func:`probe_model` checks them without reading a weight (the
configs, the header of every ``.safetensors`` file, the transformer built on the meta device for its structure),
and :func:`load_model` reads the weights. ``DiTFPipeline.from_pretrained`` runs all three.

``load_blocks="auto"`` builds and reads only the transformer blocks an early-exit capture runs (0..k, k the deepest
of ``layers``, see :mod:`ditf_core.block_loading`); ``"all"`` (the default) loads the whole transformer.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .block_loading import can_truncate, load_through_block
from .errors import DiTFInputError, UnsupportedModelError
from .families import DiTFamily, family_for, supported_families
from .latents import check_vae_fits
from .releases import CONFIGS, read_header, transformer_preset, vae_preset
from .wording import first_line

LOAD_BLOCKS = ("auto", "all")
TRANSFORMER_CLASSES = (
    "FluxTransformer2DModel", "SD3Transformer2DModel", "Flux2Transformer2DModel", "ChromaTransformer2DModel",
    "QwenImageTransformer2DModel", "Lumina2Transformer2DModel", "ZImageTransformer2DModel",
    "HiDreamImageTransformer2DModel", "PixArtTransformer2DModel", "AuraFlowTransformer2DModel", "WanTransformer3DModel",
)
VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLFlux2")
PROMPT_FAMILIES = ("flux", "sd3")  # families whose pipeline folders' text encoders DiTF runs
TEXT_ENCODER_FOLDERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
NOT_LOCAL = "nothing is downloaded: give a local path"


@dataclass(frozen=True)
class ModelFiles:
    """Where each part of a model is, resolved from what the user named; no weight has been read.

    transformer: a diffusers transformer folder or a single .safetensors file; config: the folder whose
    config.json describes the transformer; vae: a diffusers VAE folder or a single .safetensors file;
    text_folder: the pipeline folder whose text encoders encode prompts, or None (zero conditioning).
    """

    name: str
    transformer: Path
    config: Path
    vae: Path
    text_folder: Path | None


@dataclass(frozen=True)
class ModelProbe:
    """What the files say before any weight is read. skeleton: the transformer built from its config on the meta
    device (structure and config, no memory); family: its adapter."""

    files: ModelFiles
    skeleton: nn.Module
    family: DiTFamily

    @property
    def encodes_prompts(self) -> bool:
        return self.files.text_folder is not None


@dataclass(frozen=True)
class LoadedModel:
    """The parts a :class:`~ditf_core.pipeline.DiTFPipeline` is made of; prompt_encoder None: zero conditioning."""

    transformer: nn.Module
    vae: nn.Module
    prompt_encoder: object | None
    name: str


def find_model_files(path, *, vae=None, config=None, text_encoders: bool = True) -> ModelFiles:
    """Resolve ``path`` (and ``vae`` / ``config`` where it holds only a transformer) into :class:`ModelFiles`."""
    path = _existing(path, "model")
    if path.is_dir() and (path / "model_index.json").is_file():
        _check_pipeline_folder(path)
        encoders = text_encoders and any((path / name).is_dir() for name in TEXT_ENCODER_FOLDERS)
        return ModelFiles(path.name, path / "transformer", path / "transformer", _vae_files(vae or path / "vae"),
                          path if encoders else None)
    if path.is_dir():
        config_dir = path
        _class_name(path)  # a clear error for a folder that is not a diffusers model
    else:
        _check_safetensors(path)
        config_dir = _existing(config, "config") if config is not None else CONFIGS / transformer_preset(path)
    if vae is None:
        raise DiTFInputError(
            f"{path} holds only a transformer; also give its VAE (vae=... / --vae), a diffusers VAE folder, "
            "a pipeline folder with vae/, or a .safetensors VAE file"
        )
    return ModelFiles(path.name, path, config_dir, _vae_files(vae), None)


def probe_model(files: ModelFiles) -> ModelProbe:
    """Check every file of ``files`` without reading a weight: the transformer and its VAE are built on the meta
    device from their configs (structure only) and checked to fit together. The returned files drop the text
    encoders of a family whose prompts DiTF does not encode (it runs on zero conditioning)."""
    class_name = _class_name(files.config)
    cls = _transformer_class(class_name, files.config)
    _check_loadable(cls, files.transformer)
    for weights in _weight_files(files.transformer, "transformer"):
        read_header(weights, "transformer")
    with torch.device("meta"):
        skeleton = cls.from_config(cls.load_config(str(files.config)))
    family = family_for(skeleton)
    vae_class, vae_config = _vae_source(files.vae, family)
    with torch.device("meta"):
        vae_skeleton = vae_class.from_config(vae_class.load_config(str(vae_config)))
    try:
        check_vae_fits(vae_skeleton, family, skeleton)
    except ValueError as error:
        raise DiTFInputError(f"the VAE at {files.vae}: {error}") from None
    for weights in _weight_files(files.vae, "VAE"):
        read_header(weights, "VAE")
    if files.text_folder is not None and family.name not in PROMPT_FAMILIES:
        files = replace(files, text_folder=None)
    if files.text_folder is not None:
        for name in TEXT_ENCODER_FOLDERS:
            for weights in sorted((files.text_folder / name).glob("*.safetensors")):
                read_header(weights, "text encoder")
    return ModelProbe(files, skeleton, family)


def load_model(files: ModelFiles, *, device: torch.device, dtype: torch.dtype, load_blocks: str = "all",
               layers=None) -> LoadedModel:
    """Read the weights of ``files``: the transformer in ``dtype``, the VAE in float32, the text encoders if any.

    load_blocks: "all" or "auto" (only blocks 0..max(layers); without ``layers`` through the family's default layer
    of the full model), as :func:`load_transformer`.
    """
    config = files.config if files.transformer.is_file() else None
    transformer = _loading("transformer", files.transformer, lambda: load_transformer(
        files.transformer, config=config, dtype=dtype, load_blocks=load_blocks, layers=layers, device=device))
    vae = _loading("VAE", files.vae, lambda: load_vae(files.vae, transformer=transformer))
    prompt_encoder = None
    if files.text_folder is not None:
        prompt_encoder = _loading("text encoders", files.text_folder, lambda: load_prompt_encoder(
            files.text_folder, transformer, dtype=dtype, device=device))
    return LoadedModel(transformer, vae, prompt_encoder, files.name)


def load_transformer(path, *, config=None, dtype=torch.float32, load_blocks="all", layers=None, device="cpu"):
    """A diffusers transformer of a supported family from a folder (``config.json``) or a single .safetensors file.

    load_blocks "auto": for Flux and SD3 only blocks 0..max(layers), read straight onto ``device`` (see
    :func:`ditf_core.block_loading.load_through_block`); the other families load whole. "all": the whole model, on
    the CPU.
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
    _check_loadable(model_class, path)
    if load_blocks == "auto" and can_truncate(model_class):
        return load_through_block(model_class, config_dir, path, layers=layers, dtype=dtype, device=device)
    if path.is_dir():
        return model_class.from_pretrained(str(path), **_local(dtype))
    source = str(path)
    if model_class.__name__ == "QwenImageTransformer2DModel":
        # diffusers maps Qwen-Image files as they are, so ComfyUI's "model.diffusion_model." prefix would leave every
        # weight unused (and the model random): strip it first.
        from safetensors.torch import load_file

        source = {key.removeprefix("model.diffusion_model."): value for key, value in load_file(source).items()}
    return model_class.from_single_file(source, config=str(config_dir), **_local(dtype, safetensors=False))


def load_vae(path, *, transformer=None):
    """The model's diffusers VAE (float32) from a folder, a pipeline folder's ``vae/`` or a .safetensors file (its
    config: the preset of ``transformer``'s family; without a transformer, Flux.1's)."""
    path = _vae_files(path)
    vae_class, config = _vae_source(path, family_for(transformer) if transformer is not None else None)
    if path.is_dir():
        return vae_class.from_pretrained(str(path), **_local())
    return vae_class.from_single_file(str(path), config=str(config), **_local(safetensors=False))


def load_prompt_encoder(folder: Path, transformer, *, dtype, device):
    """The pipeline's text encoders as a cached prompt encoder, or None when the folder has none."""
    from .conditioning import DiffusersPromptEncoder

    family = family_for(transformer)
    if family.name not in PROMPT_FAMILIES or not any((folder / name).is_dir() for name in TEXT_ENCODER_FOLDERS):
        return None  # other families: zero conditioning, --text-embeds or ComfyUI's CONDITIONING (module docstring)
    index = _read_json(folder / "model_index.json")
    pipeline_class = _pipeline_class(index.get("_class_name", ""), family.name)
    with warnings.catch_warnings():
        # diffusers 0.42 renames torch_dtype to dtype; older releases (>= 0.32, which we support) know only torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
        pipeline = pipeline_class.from_pretrained(str(folder), transformer=None, vae=None, **_local(dtype)).to(device)
    return DiffusersPromptEncoder(pipeline, family.name)


def _vae_files(path) -> Path:
    """The VAE part of what the user named: a VAE folder, a pipeline folder's vae/, or a .safetensors file."""
    path = _existing(path, "vae")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise DiTFInputError(f"{path} is not a diffusers VAE folder (no config.json)")
        return path
    _check_safetensors(path)
    return path


def _vae_source(path: Path, family: DiTFamily | None) -> tuple[type, Path]:
    """(diffusers VAE class, config folder) of the VAE at ``path``: a folder's own config, or for a single file the
    preset of ``family``'s VAE."""
    import diffusers

    config = path if path.is_dir() else CONFIGS / vae_preset(family, path)
    class_name = _read_json(config / "config.json").get("_class_name", "")
    if class_name not in VAE_CLASSES:
        raise DiTFInputError(f"{config} is not a diffusers VAE folder (config.json of one of {', '.join(VAE_CLASSES)})")
    return getattr(diffusers, class_name), config


def _check_loadable(model_class: type, path: Path) -> None:
    """Refuse what diffusers cannot load here: a single file of a class without ``from_single_file``, a folder of
    a class that keeps modules in float32 (diffusers then needs ``accelerate``) when accelerate is missing."""
    from diffusers.utils import is_accelerate_available

    name = model_class.__name__
    if path.is_file() and not hasattr(model_class, "from_single_file"):
        raise UnsupportedModelError(f"{path.name}: diffusers cannot load a single-file {name}; give the diffusers "
                                    "folder instead")
    if path.is_dir() and model_class._keep_in_fp32_modules is not None and not is_accelerate_available():
        raise DiTFInputError(
            f"{path}: diffusers loads {name} folders only with the `accelerate` package (it keeps some layers in "
            "float32 while loading); install it (pip install accelerate) or load the single .safetensors file of "
            "the transformer"
        )


def _weight_files(path: Path, what: str) -> list[Path]:
    """The .safetensors files of a model folder (or the file itself); a folder without any is refused."""
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DiTFInputError(f"the {what} folder {path} holds no .safetensors weights (only .safetensors are "
                             "read); convert the weights or give another folder")
    return files


def _loading(what: str, path: Path, load):
    """``load()``, with any error of the file readers turned into one message naming the file."""
    try:
        return load()
    except DiTFInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise DiTFInputError(f"could not load the {what} from {path}: {first_line(error)}") from error


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DiTFInputError(f"{path} is not a readable JSON file ({error}); download it again") from None
    if not isinstance(data, dict):
        raise DiTFInputError(f"{path} is not a diffusers config (a JSON object expected)")
    return data


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
    pipeline = _read_json(folder / "model_index.json").get("_class_name", "pipeline")
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
    return _read_json(config).get("_class_name", "")


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
