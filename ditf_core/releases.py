"""Single ``.safetensors`` files: their header, and which known release a transformer file is.

A single file carries weights but no diffusers config. For the known releases the config comes from a preset in
``ditf_core/configs``: :func:`transformer_preset` recognises Flux.1 / SD3 / Qwen-Image by their tensor names, and the
other families through diffusers' own ``infer_diffusers_model_type`` (tensor names and shapes, read from the header:
no weight is read). Single-file VAEs carry no config either: :data:`VAE_PRESETS` names each family's.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DiTFInputError, UnsupportedModelError
from .families import supported_families
from .wording import first_line

CONFIGS = Path(__file__).parent / "configs"
# diffusers' infer_diffusers_model_type -> our preset config (None: recognised, but pass its config folder).
RELEASE_PRESETS = {
    "flux-2-dev": "flux2-dev", "chroma": "chroma", "lumina2": "lumina2", "z-image-turbo": "z-image-turbo",
    "auraflow": "auraflow-v0.3", "wan-t2v-1.3B": "wan2.1-t2v-1.3b", "wan-t2v-14B": "wan2.1-t2v-14b", "hidream": None,
}
# The preset of each family's single-file VAE (None: only a diffusers VAE folder will do).
VAE_PRESETS = {
    "flux": "flux-vae", "chroma": "flux-vae", "lumina2": "flux-vae", "z_image": "flux-vae", "hidream": "flux-vae",
    "sd3": "sd3-vae", "auraflow": "sdxl-vae", "wan": "wan-vae", "qwen_image": None, "flux2": None, "pixart": None,
}


def transformer_preset(path: Path) -> str:
    """The preset config for a known single-file transformer release, judged from its tensor names (and shapes)."""
    keys = {key.removeprefix("model.diffusion_model.") for key in read_header(Path(path), "transformer")}
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


def vae_preset(family, path: Path) -> str:
    """The preset config folder name for ``family``'s single-file VAE at ``path`` (family None: Flux.1's, for a
    VAE loaded without its transformer), or an error asking for its diffusers folder."""
    preset = VAE_PRESETS["flux"] if family is None else VAE_PRESETS.get(family.name)
    if preset is None:
        raise DiTFInputError(
            f"{path.name}: a single-file VAE cannot be loaded for {family.label} (diffusers has no single-file loader "
            "or no config for it); give the diffusers VAE folder (vae/ of the model's pipeline)"
        )
    return preset


def read_header(path: Path, what: str) -> set[str]:
    """The tensor names of a .safetensors file, reading only its header; a damaged file is refused."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except Exception as error:  # safetensors raises its own SafetensorError for a damaged or truncated file
        raise DiTFInputError(f"the {what} file {path} is not a readable .safetensors file ({first_line(error)}); "
                             "it may be truncated or not a safetensors file: download or convert it again") from None


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


def _count(keys: set[str], prefix: str) -> int:
    indices = {key[len(prefix) :].split(".", 1)[0] for key in keys if key.startswith(prefix)}
    return len({index for index in indices if index.isdigit()})


def _unknown_variant(path: Path, found: str) -> str:
    return f"{path.name} is a {found}, not a known release; pass the diffusers config folder with config=/--config"
