"""DITF_MODEL: what the Load DiT nodes produce, and feature extraction from it whichever host it wraps.

A :class:`DiTFModel` holds a *host*:

* ``comfy_host.ComfyHost`` - the Flux / SD3 MODEL, VAE and optional CLIP the user already has loaded in ComfyUI;
* :class:`DiffusersHost` - a ``ditf_core.DiTFPipeline`` loaded from a diffusers folder.

A host encodes images, builds text conditioning and captures block inputs averaged over the ensemble. Everything
else - resize mapping, seeding, massive channels, discard, LayerNorm + modulation, the settings record - happens
here, once, so both hosts return the same ``ditf_core.DiTFeatures`` with the same settings keys. Seeded random
numbers are drawn in the same order as ``DiTFPipeline.extract``: E posterior draws, then E noise draws.

This module never imports ComfyUI (it is tested without it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..ditf_core.capture import Interrupt, check_layers
from ..ditf_core.conditioning import ZeroPromptEncoder
from ..ditf_core.features import DiTFeatures
from ..ditf_core.inspect.sweep import model_key
from ..ditf_core.mapping import PixelMapping
from ..ditf_core.pipeline import (
    DiTFPipeline,
    ExtractSettings,
    draw_noise,
    features_from_capture,
    resolve_discard,
    resolve_settings,
)
from ..ditf_core.recipe import EnsembleCapture, ProgressFn, capture_ensemble, plan_passes
from ..ditf_core.visualize import pca_rgb
from .checks import check_float

DEFAULT_GUIDANCE = 3.5  # Flux-dev's distilled guidance when the conditioning carries none (ComfyUI's default too)


@dataclass(frozen=True)
class TextConditioning:
    """Text conditioning in host-neutral form: context [1 or B, L, D], pooled [1 or B, P], Flux guidance.

    source: "zero" (no text encoder), "prompt" (encoded here) or "CONDITIONING input". streams: further text
    streams of families that have them, batch-first, under ComfyUI's CONDITIONING keys (HiDream:
    ``conditioning_llama3`` [B, layers, L, D]).
    """

    context: torch.Tensor
    pooled: torch.Tensor
    guidance: float
    source: str
    streams: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCapture:
    """Raw block inputs before the recipe's discard / LayerNorm / modulation (what an inspector analyses).

    layers: {global block index: EnsembleCapture (hidden [B, N, C] float32 averaged over the ensemble,
    modulation [B, C] each, grid)}; settings: resolved settings (``layer`` = the deepest block); mapping: original
    pixels <-> feature cells; conditioning: where the text conditioning came from.
    """

    layers: dict[int, EnsembleCapture]
    settings: ExtractSettings
    mapping: PixelMapping
    conditioning: str


@dataclass(frozen=True)
class DiTFModel:
    """The DITF_MODEL value: a host plus the recipe. Immutable; safe to share between node runs."""

    host: Any

    @property
    def family(self):
        return self.host.family

    @property
    def defaults(self):
        return self.host.defaults

    @property
    def depth(self) -> int:
        return len(self.family.blocks(self.host.structure))

    @property
    def split(self) -> int:
        return self.family.split(self.host.structure)

    def model_key(self) -> str:
        """A stable key of the weights the host runs (the inspector's sweep cache is keyed by it)."""
        return self.host.model_key()

    def summary(self) -> str:
        """One paragraph for users: family, blocks, defaults, host and text conditioning."""
        d, depth, split = self.defaults, self.depth, self.split
        blocks = f"{split} double + {depth - split} single blocks" if split < depth else f"{depth} joint blocks"
        model = self.host.describe()
        return (
            f"{self.family.label} ({model['class']}, {self.host.kind} host): {blocks}, hidden size "
            f"{model['hidden_size']}. Defaults: layer {d.layer}, t {d.t}, {d.resolution} px, ensemble {d.ensemble} "
            f"({d.source}). Text: {model['text']}."
        )

    def extract(self, pixels, *, layer: int | None = None, **settings) -> DiTFeatures:
        """DiTF features of one block (``layer`` None or -1: the family default); see :meth:`extract_layers`."""
        features = self.extract_layers(pixels, layers=[layer], **settings)
        return next(iter(features.values()))

    def extract_layers(self, pixels, *, discard="auto", **settings) -> dict[int, DiTFeatures]:
        """Features of several blocks from ONE early-exit pass per ensemble draw, keyed by global block index.

        discard: "auto" (massive channels found at that block), "none" or channel numbers; mode "ditf" only.
        Other arguments as in :meth:`capture`.
        """
        if settings.get("mode", "ditf") == "ditf":
            resolve_discard(discard, [], self.host.hidden_size)  # a bad channel list fails now, not after the passes
        run = self.capture(pixels, **settings)
        model, extra = self.host.describe(), {"host": self.host.kind, "conditioning": run.conditioning}
        return {
            layer: features_from_capture(self.family, capture, run.mapping, replace(run.settings, layer=layer),
                                         discard=discard, model=model, extra=extra)
            for layer, capture in run.layers.items()
        }

    def capture(
        self,
        pixels,
        *,
        layers: Sequence[int | None] = (None,),
        t: float | None = None,
        ensemble: int | None = None,
        resolution: int | None = None,
        seed: int = 0,
        mode: str = "ditf",
        prompt: str = "",
        conditioning=None,
        ratio: float = 100.0,
        progress: ProgressFn | None = None,
        available_memory: int | None = None,
    ) -> ModelCapture:
        """Recipe steps 1-5 (resize, encode, noise, run to the deepest block, average) for ``layers``.

        pixels: float [B, 3, H, W] in [0, 1] (see ``checks.image_batch``). layers: global block indices, None or -1
        for the family default. conditioning: ComfyUI CONDITIONING (exclusive with ``prompt``). ``mode`` and
        ``ratio`` are checked and recorded for the recipe. progress(done, total) is called after each pass.
        available_memory: free bytes where the host runs (``host.device``); the images are split over as many
        passes per draw as that needs, and a capture that cannot fit is refused before any work (None: no check,
        all images in one pass per draw). The resolution is checked against the model first, also before any work.
        """
        host, d = self.host, self.defaults
        chosen = [d.layer if layer is None or layer == -1 else layer for layer in layers]
        layers = check_layers(host.structure, self.family, chosen)
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError("pixels must be a float tensor [B, 3, H, W] in [0, 1]")
        s = resolve_settings(d, layer=layers[-1], t=t, ensemble=ensemble, resolution=resolution, seed=seed, mode=mode,
                             prompt=prompt, guidance=DEFAULT_GUIDANCE, ratio=ratio)
        batch, _, height, width = pixels.shape
        mapping = self.family.check_resolution(host.structure, (width, height), s.resolution)  # before any work
        images_per_pass = plan_passes(
            images=batch, tokens=mapping.grid_size[0] * mapping.grid_size[1], hidden_size=host.hidden_size,
            blocks_kept=len(layers), available_bytes=available_memory, device=host.device,
        )
        cond = self.conditioning(prompt, conditioning, batch)
        generator = torch.Generator("cpu").manual_seed(s.seed)
        latents = host.encode(pixels, mapping, s.ensemble, generator)
        noise = draw_noise((s.ensemble, *latents.shape[1:]), generator)
        captured = host.capture(latents, noise, t=s.t, layers=layers, conditioning=cond, progress=progress,
                                micro_batch=images_per_pass)
        return ModelCapture(captured, replace(s, guidance=cond.guidance), mapping, cond.source)

    def conditioning(self, prompt: str, conditioning, batch: int) -> TextConditioning:
        """CONDITIONING input, else the prompt through the host's text encoders, else zero conditioning."""
        host = self.host
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be text, got {type(prompt).__name__}")
        if conditioning is not None:
            if prompt.strip():
                raise ValueError("give either a CONDITIONING input or prompt text, not both; clear the prompt widget")
            cond = parse_conditioning(conditioning, host.context_dim, host.pooled_dim, self.family.label,
                                      streams=host.text_streams)
        elif host.can_encode_prompts:
            cond = host.encode_prompt(prompt)
        elif prompt.strip():
            raise ValueError(
                "prompt text needs text encoders: wire a CLIP into Load DiT (or load the diffusers folder with "
                "text_encoders on), or connect a CONDITIONING instead"
            )
        else:
            cond = host.zero_conditioning()
        for name, value in (("text embeddings", cond.context), ("pooled_output", cond.pooled), *cond.streams.items()):
            if value.shape[0] not in (1, batch):
                raise ValueError(
                    f"the CONDITIONING {name} have batch {value.shape[0]} but the IMAGE batch holds {batch} images; "
                    "give one conditioning (shared by all images) or exactly one per image"
                )
        return cond


def parse_conditioning(conditioning, context_dim: int, pooled_dim: int | None, label: str,
                       source: str = "CONDITIONING input", streams: tuple[str, ...] = ()) -> TextConditioning:
    """ComfyUI CONDITIONING ``[[context [B, L, D], {"pooled_output": [B, P], "guidance": g, ...}]]`` checked
    against the model's widths; ``streams``: further text streams the family needs from the dict (HiDream:
    ``conditioning_llama3``)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise TypeError("conditioning must be ComfyUI CONDITIONING (from a text encode node), got "
                        f"{type(conditioning).__name__}")
    if len(conditioning) > 1:
        raise ValueError(
            f"the CONDITIONING holds {len(conditioning)} entries (combined or area conditioning); DiTF uses one "
            "text conditioning: connect a single text encode"
        )
    entry = conditioning[0]
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[1], dict):
        raise TypeError("conditioning entries must be [tensor, dict] as ComfyUI's text encoders make them")
    context, extra = entry
    if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[-1] != context_dim:
        shape = list(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(
            f"the CONDITIONING text embeddings are {shape} but this {label} expects [B, L, {context_dim}]; encode the "
            "prompt with this model's own text encoders (Flux: DualCLIPLoader type flux; SD3: TripleCLIPLoader)"
        )
    pooled = extra.get("pooled_output")
    if pooled is None and pooled_dim is None:
        pooled = torch.zeros(context.shape[0], 1)
    wrong_width = isinstance(pooled, torch.Tensor) and pooled_dim is not None and pooled.shape[-1] != pooled_dim
    if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2 or wrong_width:
        shape = list(pooled.shape) if isinstance(pooled, torch.Tensor) else pooled
        raise ValueError(
            f"the CONDITIONING pooled_output is {shape} but this {label} expects [B, {pooled_dim}]; use a text encode "
            "node of this model's CLIP"
        )
    if pooled.shape[0] != context.shape[0]:
        raise ValueError(
            f"the CONDITIONING has {context.shape[0]} text embeddings but {pooled.shape[0]} pooled vectors"
        )
    guidance = extra.get("guidance")
    guidance = DEFAULT_GUIDANCE if guidance is None else check_float("CONDITIONING guidance", guidance, 0.0, 1000.0)
    found = {}
    for key in streams:
        value = extra.get(key)
        if not isinstance(value, torch.Tensor) or value.shape[0] != context.shape[0]:
            raise ValueError(
                f"this {label} needs '{key}' in its CONDITIONING (batch {context.shape[0]}); encode the prompt with "
                "the model's own text encoders (HiDream: QuadrupleCLIPLoader)"
            )
        found[key] = value
    return TextConditioning(context, pooled, guidance, source, found)


def preview_image(features: DiTFeatures) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, 3] in [0, 1] at the original image size: one PCA over the whole batch, so equal
    colours mean similar features across images; feature cells stay visible (nearest-neighbour upsampling)."""
    maps = pca_rgb(list(features.features))
    width, height = features.mapping.image_size
    rgb = F.interpolate(torch.stack(maps), size=(height, width), mode="nearest")
    return rgb.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


@dataclass(frozen=True)
class DiffusersHost:
    """A ``ditf_core.DiTFPipeline`` (transformer, VAE, prompt encoder) from a diffusers folder.

    interrupt: called before every block of a capture pass up to the deepest captured one; raises to stop (the
    loader node passes ComfyUI's Cancel check). None: passes run to their end.
    """

    pipeline: DiTFPipeline
    kind: str = "diffusers"
    interrupt: Interrupt | None = None

    @property
    def family(self):
        return self.pipeline.family

    @property
    def structure(self):
        return self.pipeline.transformer

    @property
    def defaults(self):
        return self.pipeline.defaults

    @property
    def hidden_size(self) -> int:
        return self.family.hidden_size(self.pipeline.transformer)

    @property
    def context_dim(self) -> int:
        return self.family.text_width(self.pipeline.transformer)

    @property
    def pooled_dim(self) -> int | None:
        return self.family.pooled_width(self.pipeline.transformer)

    @property
    def text_streams(self) -> tuple[str, ...]:
        """Further text streams the family takes besides ``context`` (the keys of its text_embeds dict)."""
        zeros, _ = self.family.zero_conditioning(self.pipeline.transformer, 1)
        return tuple(key for key in zeros if key != "context") if isinstance(zeros, dict) else ()

    @property
    def can_encode_prompts(self) -> bool:
        return not isinstance(self.pipeline.prompt_encoder, ZeroPromptEncoder)

    def describe(self) -> dict:
        return self.pipeline.describe()

    def model_key(self) -> str:
        """``ditf_core.inspect.model_key`` of the transformer: the key ``inspect_pipeline`` caches sweeps under."""
        return model_key(self.pipeline.transformer)

    def encode(self, pixels, mapping, ensemble, generator) -> torch.Tensor:
        return self.pipeline.encode(pixels, mapping, ensemble, generator)

    def encode_prompt(self, prompt: str) -> TextConditioning:
        return _conditioning(*self.pipeline.prompt_encoder(prompt), "prompt")

    def zero_conditioning(self) -> TextConditioning:
        return _conditioning(*self.pipeline.prompt_encoder(""), "zero")

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def capture(self, latents, noise, *, t, layers, conditioning, progress=None,
                micro_batch=None) -> dict[int, EnsembleCapture]:
        # micro_batch None: one pass per ensemble draw (all images together), so the progress bar counts draws.
        return capture_ensemble(
            self.pipeline.transformer,
            latents,
            t=t,
            layers=layers,
            text_embeds={"context": conditioning.context, **conditioning.streams} if conditioning.streams
            else conditioning.context,
            pooled=conditioning.pooled,
            noise=noise,
            guidance=conditioning.guidance,
            micro_batch=micro_batch or latents.shape[1],
            progress=progress,
            family=self.family,
            interrupt=self.interrupt,
        )


def _conditioning(text_embeds, pooled: torch.Tensor, source: str) -> TextConditioning:
    """A prompt encoder's (text_embeds, pooled) as TextConditioning: a dict of streams is split into the main
    ``context`` and the rest."""
    if isinstance(text_embeds, dict):
        streams = {key: value for key, value in text_embeds.items() if key != "context"}
        return TextConditioning(text_embeds["context"], pooled, DEFAULT_GUIDANCE, source, streams)
    return TextConditioning(text_embeds, pooled, DEFAULT_GUIDANCE, source)

