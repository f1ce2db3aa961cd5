"""Loading real models for users, from local files only (nothing is downloaded, nothing is unpickled).

Accepted:
* a diffusers pipeline folder (``model_index.json`` with ``transformer/`` and ``vae/``; text encoders are used
  when present and ``text_encoders=True``, otherwise extraction uses zero conditioning);
* a diffusers transformer folder (``config.json`` of a supported transformer class) plus ``vae=``;
* a single ``.safetensors`` transformer file (original / ComfyUI / diffusers key layout) plus ``vae=``, through
  diffusers' ``from_single_file`` (every supported family but PixArt, which diffusers cannot load that way); its
  diffusers config comes from ``config=`` or, for the known releases, from the presets in ``ditf_core/configs``
  (the release is recognised by diffusers' own ``infer_diffusers_model_type``, Flux.1 / SD3 / Qwen-Image by their
  tensor names).

Text encoders of pipeline folders are used for Flux.1 and SD3 / SD3.5; the other families run on zero conditioning,
precomputed embeddings (``--text-embeds``) or, in ComfyUI, a CONDITIONING input.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .errors import DiTFInputError, UnsupportedModelError
from .families import supported_families

CONFIGS = Path(__file__).parent / "configs"
TRANSFORMER_CLASSES = (
    "FluxTransformer2DModel", "SD3Transformer2DModel", "Flux2Transformer2DModel", "ChromaTransformer2DModel",
    "QwenImageTransformer2DModel", "Lumina2Transformer2DModel", "ZImageTransformer2DModel",
    "HiDreamImageTransformer2DModel", "PixArtTransformer2DModel", "AuraFlowTransformer2DModel", "WanTransformer3DModel",
)
VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLFlux2")
# diffusers' infer_diffusers_model_type -> our preset config (None: recognised, but pass its config folder).
RELEASE_PRESETS = {
    "flux-2-dev": "flux2-dev", "chroma": "chroma", "lumina2": "lumina2", "z-image-turbo": "z-image-turbo",
    "auraflow": "auraflow-v0.3", "wan-t2v-1.3B": "wan2.1-t2v-1.3b", "wan-t2v-14B": "wan2.1-t2v-14b", "hidream": None,
}
# Single-file VAEs carry no config: the preset of each family's VAE (None: only a diffusers VAE folder will do).
VAE_PRESETS = {
    "flux": "flux-vae", "chroma": "flux-vae", "lumina2": "flux-vae", "z_image": "flux-vae", "hidream": "flux-vae",
    "sd3": "sd3-vae", "auraflow": "sdxl-vae", "wan": "wan-vae", "qwen_image": None, "flux2": None, "pixart": None,
}
NOT_LOCAL = "nothing is downloaded: give a local path"


def load_pipeline(
    path,
    *,
    vae=None,
    config=None,
    text_encoders: bool = True,
    device=None,
    dtype=None,
):
    """A :class:`~ditf_core.pipeline.DiTFPipeline` from local files (see the module docstring)."""
    from .pipeline import DiTFPipeline, resolve_device_dtype

    device, dtype = resolve_device_dtype(device, dtype)
    path = _existing(path, "model")
    prompt_encoder = None
    if path.is_dir() and (path / "model_index.json").is_file():
        _check_pipeline_folder(path)
        transformer = load_transformer(path / "transformer", dtype=dtype)
        vae_model = load_vae(vae if vae is not None else path / "vae", transformer=transformer)
        if text_encoders:
            prompt_encoder = load_prompt_encoder(path, transformer, dtype=dtype, device=device)
    else:
        transformer = load_transformer(path, config=config, dtype=dtype)
        if vae is None:
            raise DiTFInputError(
                f"{path} holds only a transformer; also give its VAE (vae=... / --vae), a diffusers VAE folder, "
                "a pipeline folder with vae/, or a .safetensors VAE file"
            )
        vae_model = load_vae(vae, transformer=transformer)
    return DiTFPipeline(transformer, vae_model, prompt_encoder, device=device, dtype=dtype, name=path.name)


def load_transformer(path, *, config=None, dtype=torch.float32):
    """A diffusers transformer of a supported family from a folder (``config.json``) or a single .safetensors
    file."""
    path = _existing(path, "transformer")
    if path.is_dir():
        class_name = _class_name(path)
        try:
            return _transformer_class(class_name, path).from_pretrained(str(path), **_local(dtype))
        except ValueError as error:
            if "keep_in_fp32_modules" not in str(error):
                raise
            raise DiTFInputError(
                f"{path}: diffusers loads {class_name} folders only with the `accelerate` package (it keeps some "
                "layers in float32 while loading); install it (pip install accelerate) or load the single "
                ".safetensors file of the transformer"
            ) from error
    _check_safetensors(path)
    config_dir = _existing(config, "config") if config is not None else CONFIGS / transformer_preset(path)
    class_name = _class_name(config_dir)
    model_class = _transformer_class(class_name, config_dir)
    if not hasattr(model_class, "from_single_file"):
        raise UnsupportedModelError(
            f"{path.name}: diffusers cannot load a single-file {class_name}; give the diffusers folder instead"
        )
    source = str(path)
    if class_name == "QwenImageTransformer2DModel":
        # diffusers maps Qwen-Image files as they are, so ComfyUI's "model.diffusion_model." prefix would leave every
        # weight unused (and the model random): strip it first.
        from safetensors.torch import load_file

        source = {key.removeprefix("model.diffusion_model."): value for key, value in load_file(source).items()}
    return model_class.from_single_file(source, config=str(config_dir), **_local(dtype, safetensors=False))


def load_vae(path, *, transformer=None):
    """The model's diffusers VAE (float32) from a folder, a pipeline folder's ``vae/`` or a .safetensors file."""
    import diffusers

    from .families import family_for

    path = _existing(path, "vae")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            path = path / "vae"
        class_name = _class_name(path) if (path / "config.json").is_file() else ""
        if class_name not in VAE_CLASSES:
            raise DiTFInputError(f"{path} is not a diffusers VAE folder (config.json of one of {', '.join(VAE_CLASSES)})")
        return getattr(diffusers, class_name).from_pretrained(str(path), **_local())
    _check_safetensors(path)
    family = family_for(transformer) if transformer is not None else None
    preset = VAE_PRESETS.get(family.name if family else "flux")
    if preset is None:
        raise DiTFInputError(
            f"{path.name}: a single-file VAE cannot be loaded for {family.label} (diffusers has no single-file "
            "loader or no config for it); give the diffusers VAE folder (vae/ of the model's pipeline)"
        )
    vae_class = getattr(diffusers, json.loads((CONFIGS / preset / "config.json").read_text())["_class_name"])
    return vae_class.from_single_file(str(path), config=str(CONFIGS / preset), **_local(safetensors=False))


def load_prompt_encoder(folder: Path, transformer, *, dtype, device):
    """The pipeline's text encoders as a cached prompt encoder, or None when the folder has none."""
    from .conditioning import DiffusersPromptEncoder
    from .families import family_for

    family = family_for(transformer)
    if family.name not in ("flux", "sd3"):
        return None  # other families: zero conditioning, --text-embeds or ComfyUI's CONDITIONING (module docstring)
    if not any((folder / name).is_dir() for name in ("text_encoder", "text_encoder_2", "text_encoder_3")):
        return None
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
    if "transformer_blocks.0.img_mod.1.weight" in keys and "txt_norm.weight" in keys:
        return "qwen-image"  # Qwen-Image ships in diffusers layout (diffusers' detection does not name it)
    return _release_preset(path)


def _release_preset(path: Path) -> str:
    """The preset of a release diffusers' ``infer_diffusers_model_type`` recognises from the tensor names/shapes."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:  # shapes only: no tensor is read
        shapes = {key: _Shape(tuple(handle.get_slice(key).get_shape())) for key in handle.keys()}
    try:
        release = infer_diffusers_model_type(shapes)
    except (KeyError, IndexError, AttributeError):
        release = ""
    if release not in RELEASE_PRESETS:
        raise UnsupportedModelError(
            f"{path} is not a transformer of a supported release (diffusers sees {release or 'nothing it knows'}); "
            f"supported: {supported_families()}. PixArt loads from a diffusers folder only."
        )
    preset = RELEASE_PRESETS[release]
    if preset is None:
        raise DiTFInputError(_unknown_variant(path, f"{release} checkpoint with no preset config here"))
    keys = {key.removeprefix("model.diffusion_model.") for key in shapes}
    if preset == "flux2-dev" and (_count(keys, "double_blocks."), _count(keys, "single_blocks.")) != (8, 48):
        found = f"Flux.2 with {_count(keys, 'double_blocks.')}+{_count(keys, 'single_blocks.')} blocks (klein?)"
        raise DiTFInputError(_unknown_variant(path, found))
    return preset


class _Shape:
    """What diffusers' model-type detection reads of a tensor: its shape."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


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
