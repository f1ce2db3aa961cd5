"""From images to DiTF features (design §2, the whole recipe).

``DiTFPipeline`` holds a transformer, its VAE and a prompt encoder. ``extract`` resizes the images (keeping the
mapping back to original pixels), encodes each image once, draws the E ensemble latents from that one posterior,
noises them, runs the transformer to block k in micro-batches and applies the recipe. Seeded and deterministic:
all random numbers come from one CPU generator, whatever the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import latents as latent_spaces
from .block_loading import full_structure, loaded_depth
from .capture import check_layers
from .conditioning import ZeroPromptEncoder
from .errors import DiTFInputError
from .features import DiTFeatures
from .families import DiTFamily, FamilyDefaults, family_for
from .images import as_image_batch, resize_for_model
from .loading import ModelFiles, find_model_files, load_model, probe_model
from .mapping import PixelMapping
from .massive import find_massive_channels
from .micro_batch import auto_micro_batch
from .recipe import (
    EnsembleCapture,
    ProgressFn,
    apply_recipe,
    capture_ensemble,
    check_channels,
    check_timestep,
    plan_passes,
    text_token_count,
)

MODES = ("ditf", "adaln", "original")
MODE_HELP = {
    "ditf": "LayerNorm + AdaLN modulation with massive channels discarded (the paper's DiTF)",
    "adaln": "LayerNorm + AdaLN modulation, no discard (ablation)",
    "original": "the raw block input, no LayerNorm or modulation (ablation)",
}


@dataclass(frozen=True)
class ExtractSettings:
    """Resolved settings of one extraction (defaults filled in from the family)."""

    layer: int
    t: float
    ensemble: int
    resolution: int
    seed: int
    mode: str
    prompt: str
    guidance: float
    ratio: float


@dataclass(frozen=True)
class PipelineCapture:
    """What :meth:`DiTFPipeline.capture` returns.

    layers: {global block index: EnsembleCapture (hidden [B, N, C] float32, modulation [B, C] each, grid)};
    settings: the resolved settings; mapping: original pixels <-> feature cells; pixels: the input images
    [B, 3, H, W] in [0, 1] at their original size.
    """

    layers: dict[int, EnsembleCapture]
    settings: ExtractSettings
    mapping: PixelMapping
    pixels: torch.Tensor


class DiTFPipeline:
    """A DiT, its VAE and a prompt encoder, ready to extract features.

    transformer: a diffusers transformer of a supported family (``ditf_core.supported_families()``).
    vae: that model's diffusers VAE (``AutoencoderKL``, a video VAE for Wan / Qwen-Image, ``AutoencoderKLFlux2``;
        see :mod:`ditf_core.latents`).
    prompt_encoder: ``prompt -> (text_embeds [1, L, D], pooled [1, P])``; None uses zero conditioning.
    device / dtype: None picks CUDA with bf16 (fp16 where bf16 is unsupported) when available, else CPU fp32.
    The VAE always runs in float32; LayerNorm and modulation are computed in float32.
    """

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        prompt_encoder=None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str = "",
    ) -> None:
        self.family = family_for(transformer)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.transformer = _move(transformer, self.device, self.dtype)
        self.vae = _move(latent_spaces.check_vae_fits(vae, self.family, transformer), self.device, torch.float32)
        self.prompt_encoder = prompt_encoder or ZeroPromptEncoder(transformer)
        self.defaults = self.family.defaults(full_structure(transformer))  # of the full model, even if truncated
        self.name = name or type(transformer).__name__
        self.vae_encode_calls = 0

    # --- constructors -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path, *, vae=None, config=None, text_encoders: bool = True, device=None, dtype=None,
        load_blocks: str = "all", layers: Sequence[int] | None = None,
    ) -> DiTFPipeline:
        """Load from a local diffusers folder or a single .safetensors transformer (see :mod:`ditf_core.loading`).

        vae: the VAE (folder or .safetensors) when ``path`` holds only a transformer; config: the diffusers config
        folder of a single-file transformer that is not a known release; text_encoders: use the folder's text
        encoders for prompts (False: zero conditioning). Every file is checked before any weight is read.
        load_blocks: "all", or "auto" for only the transformer blocks 0..max(layers) (without ``layers``: through
        the family's default layer); such a pipeline refuses deeper layers with a message saying to load "all".
        """
        files = probe_model(find_model_files(path, vae=vae, config=config, text_encoders=text_encoders)).files
        return cls.from_files(files, device=device, dtype=dtype, load_blocks=load_blocks, layers=layers)

    @classmethod
    def from_files(cls, files: ModelFiles, *, device=None, dtype=None, load_blocks: str = "all",
                   layers: Sequence[int] | None = None) -> DiTFPipeline:
        """Load model files already found by :func:`~ditf_core.loading.find_model_files` and checked by
        :func:`~ditf_core.loading.probe_model` (use the files it returns); load_blocks / layers as
        :meth:`from_pretrained`."""
        device, dtype = resolve_device_dtype(device, dtype)
        parts = load_model(files, device=device, dtype=dtype, load_blocks=load_blocks, layers=layers)
        return cls(parts.transformer, parts.vae, parts.prompt_encoder, device=device, dtype=dtype, name=parts.name)

    @classmethod
    def demo(cls, seed: int = 0, **kwargs) -> DiTFPipeline:
        """The built-in tiny demo DiT (RANDOM weights, two planted massive channels) with a tiny random VAE."""
        from .demo_model import build_demo_dit, build_tiny_vae

        return cls(build_demo_dit(seed), build_tiny_vae(seed), name="tiny random-weight demo DiT", **kwargs)

    # --- properties -------------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Pixels of the resized model input per feature cell (16 for Flux, SD3 and most families)."""
        return self.family.patch * self.family.vae_factor

    @property
    def depth(self) -> int:
        """Blocks of the full model (also when only the first blocks were loaded, see :attr:`loaded_depth`)."""
        return len(self.family.blocks(full_structure(self.transformer)))

    @property
    def loaded_depth(self) -> int:
        """Blocks held in memory: :attr:`depth`, or fewer after ``load_blocks="auto"``."""
        return loaded_depth(self.transformer)

    def describe(self) -> dict:
        """The full model's fingerprint, also for a truncated load: its features are the same, so caches keyed by
        it are shared."""
        full = full_structure(self.transformer)
        fingerprint = self.family.fingerprint(self.transformer)
        return {"name": self.name, **fingerprint, "depth": self.depth, "split": self.family.split(full),
                "text": self.prompt_encoder.description}

    # --- extraction -------------------------------------------------------------------------------------
    @property
    def encodes_prompts(self) -> bool:
        """Whether a prompt changes the conditioning: False for zero or fixed precomputed conditioning."""
        return getattr(self.prompt_encoder, "encodes_prompts", True)

    def settings(self, **settings) -> ExtractSettings:
        """Validate the settings and fill in the family defaults (see :func:`resolve_settings`).

        A prompt is refused when this pipeline's conditioning ignores prompts, so that no record ever names a
        prompt that was not used."""
        resolved = resolve_settings(self.defaults, **settings)
        if self.encodes_prompts:
            return resolved
        if resolved.prompt.strip():
            raise DiTFInputError(
                f"prompt {resolved.prompt!r} cannot be used: this pipeline has {self.prompt_encoder.description}, "
                "which ignores prompts; load a diffusers pipeline folder that has its text encoders "
                "(text_encoders=True) to use prompts, or leave the prompt empty"
            )
        return replace(resolved, prompt="")

    @torch.no_grad()
    def extract(
        self,
        images,
        *,
        discard: str | Sequence[int] | None = "auto",
        micro_batch: int | None = None,
        progress: ProgressFn | None = None,
        **settings,
    ) -> DiTFeatures:
        """DiTF features of one image or a batch of same-size images.

        images: a PIL image, a list of same-size PIL images, or a float tensor [B, 3, H, W] / [3, H, W] in [0, 1].
        discard: "auto" (channels found by the massive-activation rule at block k), a list of channels, or
            None / "none". Used in mode "ditf"; modes "adaln" and "original" never discard.
        settings: layer, t, ensemble, resolution, seed, mode, prompt, guidance, ratio (see :meth:`settings`).
        progress: called as ``progress(done, total)`` after each transformer pass; may raise to interrupt.
        """
        run = self.capture(images, micro_batch=micro_batch, progress=progress, **settings)
        return self.features(run, discard=discard)

    def features(
        self,
        run: PipelineCapture,
        *,
        layer: int | None = None,
        mode: str | None = None,
        discard: str | Sequence[int] | None = "auto",
    ) -> DiTFeatures:
        """Recipe steps 6-8 on a capture: the features of block ``layer`` (default: the capture's settings) in
        ``mode`` (default: the settings'). One capture of several layers can serve several layers and modes."""
        s = replace(run.settings, layer=run.settings.layer if layer is None else layer,
                    mode=run.settings.mode if mode is None else _mode(mode))
        if s.layer not in run.layers:
            raise ValueError(f"layer {s.layer} was not captured (captured: {sorted(run.layers)})")
        return features_from_capture(self.family, run.layers[s.layer], run.mapping, s, discard=discard,
                                     model=self.describe())

    @torch.no_grad()
    def capture(
        self,
        images,
        *,
        layers: Sequence[int] | None = None,
        micro_batch: int | None = None,
        progress: ProgressFn | None = None,
        available_memory: int | None = None,
        **settings,
    ) -> PipelineCapture:
        """The raw multi-layer capture behind :meth:`extract` (recipe steps 1-5), for analysis.

        One early-exit pass per micro-batch captures every block in ``layers`` (default: the settings' layer);
        each comes back ensemble-averaged with its own modulation (:class:`~ditf_core.recipe.EnsembleCapture`).
        micro_batch: (draw x image) rows per pass; None runs all rows at once on the CPU and as many as the free
        memory holds on CUDA (:mod:`ditf_core.micro_batch`).
        images and settings as in :meth:`extract` (``mode`` is validated but not used here).
        available_memory: free bytes on ``self.device`` (the caller measures them: device memory on a GPU,
        available RAM on the CPU); without a ``micro_batch`` it sets the images per pass, and a capture that
        cannot fit is refused before any work (:func:`~ditf_core.recipe.plan_passes`). The resolution is checked
        against what the model takes (:meth:`~ditf_core.families.DiTFamily.check_resolution`) first.
        """
        s = self.settings(**settings)
        layers = [s.layer] if layers is None else list(layers)
        self._check_loaded(layers)
        pixels = as_image_batch(images)
        mapping = self.family.check_resolution(self.transformer, (pixels.shape[-1], pixels.shape[-2]), s.resolution)
        if available_memory is not None and micro_batch is None:
            micro_batch = plan_passes(
                images=pixels.shape[0], tokens=mapping.grid_size[0] * mapping.grid_size[1],
                hidden_size=self.family.hidden_size(self.transformer),
                blocks_kept=1 if layers is None else len(set(layers)), available_bytes=available_memory,
                device=self.device,
            )
        generator = torch.Generator("cpu").manual_seed(s.seed)
        latents = self.encode(pixels, mapping, s.ensemble, generator)
        noise = draw_noise(latents.shape, generator)
        text_embeds, pooled = self.prompt_encoder(s.prompt)
        if micro_batch is None:  # on CUDA: as many rows per pass as the free memory holds
            micro_batch = auto_micro_batch(
                self.device, rows=s.ensemble * pixels.shape[0], images=pixels.shape[0],
                image_tokens=latents.shape[-2] * latents.shape[-1] // self.family.patch**2,
                text_tokens=text_token_count(text_embeds), hidden_size=self.family.hidden_size(self.transformer),
                dtype=self.dtype, layers=len(set(layers)),
            )
        captured = capture_ensemble(
            self.transformer,
            latents,
            t=s.t,
            layers=layers,
            text_embeds=text_embeds,
            pooled=pooled,
            noise=noise,
            guidance=s.guidance,
            micro_batch=micro_batch,
            progress=progress,
            family=self.family,
        )
        return PipelineCapture(layers=captured, settings=s, mapping=mapping, pixels=pixels)

    def _check_loaded(self, layers: list[int]) -> None:
        """Layers out of the FULL model's range get the usual message; layers beyond a truncated load say so."""
        deepest = max(check_layers(full_structure(self.transformer), self.family, layers))
        if deepest >= self.loaded_depth:
            raise DiTFInputError(
                f"layer {deepest} is beyond the blocks loaded: this pipeline holds blocks "
                f"0..{self.loaded_depth - 1} of {self.depth} (loaded with load_blocks='auto'); load the model with "
                "load_blocks='all' (CLI: --load-blocks all) or ask for that layer when loading (CLI: --layer)"
            )

    def encode(
        self, pixels: torch.Tensor, mapping: PixelMapping, ensemble: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> E normalised latent samples [E, B, C, h, w] from ONE encode."""
        resized = resize_for_model(pixels, mapping.model_size) * 2.0 - 1.0
        self.vae_encode_calls += 1
        mean, std = latent_spaces.encode_posterior(self.vae, resized.to(self.device, torch.float32))
        samples = mean + std * draw_noise((ensemble, *mean.shape), generator)
        return latent_spaces.normalize(self.vae, samples)


def load_pipeline(path, **options) -> DiTFPipeline:
    """:meth:`DiTFPipeline.from_pretrained` as a function (exported as ``ditf_core.load_pipeline``)."""
    return DiTFPipeline.from_pretrained(path, **options)


def draw_noise(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Standard normal [E, B, ...] where every image of the batch gets the same E draws.

    So an image's features do not depend on which other images share its batch: extracting it alone with the
    same seed gives the same result.
    """
    ensemble, batch, *rest = shape
    return torch.randn((ensemble, 1, *rest), generator=generator).expand(ensemble, batch, *rest)


def resolve_settings(
    defaults: FamilyDefaults,
    *,
    layer: int | None = None,
    t: float | None = None,
    ensemble: int | None = None,
    resolution: int | None = None,
    seed: int = 0,
    mode: str = "ditf",
    prompt: str = "",
    guidance: float = 3.5,
    ratio: float = 100.0,
) -> ExtractSettings:
    """Checked settings with the family ``defaults`` filled in (the layer's range is checked at capture)."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    return ExtractSettings(
        layer=defaults.layer if layer is None else layer,
        t=check_timestep(defaults.t if t is None else t),
        ensemble=_positive_int("ensemble", defaults.ensemble if ensemble is None else ensemble),
        resolution=_positive_int("resolution", defaults.resolution if resolution is None else resolution),
        seed=_seed(seed),
        mode=_mode(mode),
        prompt=prompt,
        guidance=_finite("guidance", guidance),
        ratio=_finite("ratio", ratio),
    )


def features_from_capture(
    family: DiTFamily,
    capture: EnsembleCapture,
    mapping: PixelMapping,
    settings: ExtractSettings,
    *,
    discard: str | Sequence[int] | None = "auto",
    model: dict,
    extra: dict | None = None,
) -> DiTFeatures:
    """Recipe steps 6-8 on one captured block: massive channels, discard (mode "ditf"), LayerNorm + modulation
    (not in mode "original"), tokens -> [B, C, h, w]; with the settings record every host writes alike."""
    massive = find_massive_channels(capture.hidden, settings.ratio)
    mode = settings.mode
    channels = resolve_discard(discard, massive, capture.hidden.shape[-1]) if mode == "ditf" else []
    tokens = apply_recipe(capture.hidden, capture.modulation, discard=channels, modulate=mode != "original")
    record = {
        "family": family.name,
        **settings.__dict__,
        "discard": discard if isinstance(discard, str) or discard is None else list(discard),
        "massive_channels": massive,
        "model": model,
        **(extra or {}),
    }
    return DiTFeatures(family.tokens_to_map(tokens, capture.grid).contiguous(), mapping, record, tuple(channels))


def resolve_discard(discard, massive: Sequence[int], width: int) -> list[int]:
    """The channels to discard: "auto" -> ``massive``; "none"/None/() -> none; a list -> checked as given."""
    if discard is None or (isinstance(discard, str) and discard.strip().lower() in ("none", "")):
        return []
    if isinstance(discard, str):
        if discard.strip().lower() == "auto":
            return list(massive)
        return check_channels(parse_channel_list(discard), width)
    return check_channels(list(discard), width)


def parse_channel_list(text: str) -> list[int]:
    """"154, 1446" -> [154, 1446]; a clear error for anything else."""
    try:
        return [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"discard must be 'auto', 'none' or comma-separated channel numbers like '154, 1446'; got {text!r}"
        ) from None


def resolve_device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    """None -> CUDA (bf16, or fp16 without bf16 support) when available, else CPU float32."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    return device, dtype


def _move(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    # Cast only when needed: diffusers warns on every dtype cast of a model.
    parameter = next(model.parameters())
    if parameter.dtype != dtype:
        model = model.to(dtype=dtype)
    if parameter.device != device:
        model = model.to(device=device)
    return model.eval()




def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return value


def _mode(value) -> str:
    if value not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
    return value
