"""The ComfyUI host: DiTF capture on the MODEL / VAE / CLIP objects ComfyUI already has loaded.

The only module of the pack that touches ModelPatcher and ``comfy.model_management``. Capture (design §3):

* ``clone = model.clone()`` - the user's MODEL is never patched - and one
  ``clone.set_model_patch_replace(fn, "dit", "double_block" | "single_block", i)`` per requested block;
* ``fn`` hands over the image tokens entering the block and the block's own AdaLN modulation, computed by the
  block's own module, then runs the original block - or raises a private ``StopForward`` at the deepest requested
  block. What differs per family (patch keys, where the image tokens sit, how a block modulates) is described by
  the family adapters in ``nodes/families``; this module is the mechanism;
* ``clone.model.apply_model(x_t, sigma, transformer_options=<the clone's>, **conds)`` with ``sigma = t``:
  ComfyUI's flow models noise as ``sigma * noise + (1 - sigma) * x0``, the recipe's ``x_t``;
* the clone is dropped afterwards, whatever happened, so nothing stays patched.

Weights stay wherever ComfyUI keeps them (fp8 / bf16 / partly offloaded): ``load_models_gpu`` loads the clone
exactly as a sampler would. ComfyUI's ``VAE.encode`` returns the posterior mode, so the E ensemble members share
one clean latent and differ by their noise only (the diffusers host samples E posterior latents).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.utils
import torch

from ..ditf_core.capture import Consumer, check_reached
from ..ditf_core.families import DiTFamily, FamilyDefaults, Modulation
from ..ditf_core.images import resize_for_model
from ..ditf_core.pipeline import draw_noise
from ..ditf_core.recipe import EnsembleCapture, ProgressFn, average_over_ensemble
from .families import ComfyFamily, HostShape, comfy_family_for
from .model import DEFAULT_GUIDANCE, TextConditioning, parse_conditioning


class StopForward(Exception):
    """Raised by the capture patch at the deepest requested block; caught around ``apply_model`` only."""


@dataclass(frozen=True)
class ComfyHost:
    """The user's MODEL (a ModelPatcher, never modified), VAE and optional CLIP, with what DiTF needs to know.

    adapter: the family's ComfyUI-host adapter (``nodes/families``); shape: what it read off the diffusion model.
    """

    model: Any
    vae: Any
    clip: Any
    adapter: ComfyFamily
    shape: HostShape
    kind: str = "comfyui"

    @classmethod
    def create(cls, model, vae, clip=None) -> ComfyHost:
        """Inspect ComfyUI's MODEL / VAE (/ CLIP); an unsupported model gets an error naming the supported ones."""
        base = getattr(model, "model", None)
        if base is None or not hasattr(model, "clone"):
            raise TypeError(
                "model must be a ComfyUI MODEL (from a checkpoint or diffusion model loader), "
                f"got {type(model).__name__}"
            )
        diffusion = model.get_model_object("diffusion_model")
        adapter = comfy_family_for(base, diffusion)
        host = cls(model, vae, clip, adapter, adapter.shape(diffusion))
        host._check_vae()
        if clip is not None and not hasattr(clip, "encode_from_tokens_scheduled"):
            raise TypeError(f"clip must be a ComfyUI CLIP (from a CLIP loader), got {type(clip).__name__}")
        return host

    # --- what the rest of the pack reads (the same names as the diffusers host) ---------------------------
    @property
    def family(self) -> DiTFamily:
        return self.adapter.core

    @property
    def structure(self):
        """The block lists in the layout ``ditf_core.families`` adapters read."""
        return self.shape.structure

    @property
    def hidden_size(self) -> int:
        return self.shape.hidden_size

    @property
    def context_dim(self) -> int:
        return self.shape.context_dim

    @property
    def pooled_dim(self) -> int | None:
        return self.shape.pooled_dim

    def _check_vae(self) -> None:
        if not hasattr(self.vae, "encode") or not hasattr(self.vae, "latent_channels"):
            raise TypeError(
                f"vae must be a ComfyUI VAE (from a VAE or checkpoint loader), got {type(self.vae).__name__}"
            )
        needed = self.model.model.latent_format.latent_channels
        ratio = self.vae.spacial_compression_encode()
        if self.vae.latent_channels != needed or ratio != self.family.vae_factor:
            raise ValueError(
                f"the VAE makes {self.vae.latent_channels}-channel latents at 1/{ratio} scale but this "
                f"{self.family.label} needs {needed} channels at 1/{self.family.vae_factor}: wire the model's own VAE "
                "(Flux: ae.safetensors; SD3/SD3.5: the checkpoint's VAE)"
            )

    # --- what DiTFModel asks of a host --------------------------------------------------------------------
    @property
    def defaults(self) -> FamilyDefaults:
        return self.family.defaults(self.structure)

    @property
    def can_encode_prompts(self) -> bool:
        return self.clip is not None

    def describe(self) -> dict:
        """The model fingerprint, with the same keys as ``DiTFPipeline.describe``."""
        base = self.model.model
        config = getattr(base.model_config, "unet_config", {})
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        blocks = self.family.blocks(self.structure)
        return {
            "name": f"ComfyUI {type(base).__name__}",
            "family": self.family.name,
            "class": type(self.model.get_model_object("diffusion_model")).__name__,
            "config_sha256": digest,
            "depth": len(blocks),
            "split": self.family.split(self.structure),
            "hidden_size": self.hidden_size,
            "text": "the CLIP wired into Load DiT" if self.clip is not None else "zero conditioning (no CLIP wired)",
        }

    def model_key(self) -> str:
        """The inspector's sweep-cache key: ``family:config_sha256:weights digest``, plus ``:patches-<id>`` while
        weight patches (LoRA) are applied. The digest samples every block's parameters (a strided ~4k values each),
        so two models of one architecture differ; patched models get ModelPatcher's per-session patch id."""
        digest = hashlib.sha256()
        for block in self.family.blocks(self.structure):
            for name, parameter in sorted(block.named_parameters()):
                digest.update(name.encode())
                digest.update(_sampled_bytes(parameter))
        key = f"{self.family.name}:{self.describe()['config_sha256']}:{digest.hexdigest()[:16]}"
        return key + (f":patches-{self.model.patches_uuid}" if self.model.patches else "")

    def check_grid(self, grid: tuple[int, int]) -> None:
        """grid: (width, height) feature cells; position embeddings (SD3) may cap the token grid."""
        limit = self.shape.max_tokens
        if limit is not None and max(grid) > limit:
            pixels = limit * self.family.patch * self.family.vae_factor
            raise ValueError(
                f"this {self.family.label} has position embeddings for at most {limit}x{limit} tokens "
                f"({pixels} px); lower the resolution"
            )

    def encode(self, pixels: torch.Tensor, mapping, ensemble: int, generator: torch.Generator) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> clean normalised latents [1, B, C, h, w] (one per image)."""
        check_interrupted()
        resized = resize_for_model(pixels, mapping.model_size)
        raw = self.vae.encode(resized.movedim(1, -1))
        latents = self.model.model.process_latent_in(raw.float()).float().cpu()
        # The diffusers host draws E posterior samples here; draw (and ignore: ComfyUI gives the posterior mode)
        # the same numbers so that both hosts noise with the same draws for a seed.
        draw_noise((ensemble, *latents.shape), generator)
        return latents.unsqueeze(0)

    def encode_prompt(self, prompt: str) -> TextConditioning:
        conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        return parse_conditioning(conditioning, self.context_dim, self.pooled_dim, self.family.label, source="prompt")

    def zero_conditioning(self) -> TextConditioning:
        context = torch.zeros(1, self.family.zero_text_tokens, self.context_dim)
        return TextConditioning(context, torch.zeros(1, self.pooled_dim or 1), DEFAULT_GUIDANCE, "zero")

    def capture(self, latents, noise, *, t: float, layers: list[int], conditioning: TextConditioning,
                progress: ProgressFn | None = None) -> dict[int, EnsembleCapture]:
        """Block inputs of ``layers`` averaged over the ensemble, one early-exit pass per draw (all images)."""
        batch = latents.shape[1]
        patch = self.family.patch
        grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        context = conditioning.context.expand(batch, *conditioning.context.shape[1:])
        pooled = conditioning.pooled.expand(batch, *conditioning.pooled.shape[1:])
        reached: set[int] = set()
        consumer: list[Consumer] = []  # the running pass's consumer, read by the patches
        clone = self.model.clone()
        blocks = self.family.blocks(self.structure)
        for layer in layers:
            tokens = self.adapter.image_slice(self.structure, layer, context.shape[1], grid[0] * grid[1])
            patch_fn = _capture_patch(consumer, reached, self.adapter, layer, blocks[layer], tokens,
                                      stop=layer == layers[-1])
            clone.set_model_patch_replace(patch_fn, "dit", *self.adapter.patch_key(self.structure, layer))
        base = clone.model
        shape = [batch, *latents.shape[2:]]
        comfy.model_management.load_models_gpu(
            [clone], memory_required=base.memory_required(shape), minimum_memory_required=base.memory_required(shape)
        )
        device = clone.load_device  # where load_models_gpu put the weights (as samplers do)
        options = clone.model_options["transformer_options"]

        def run(x_t: torch.Tensor, images: torch.Tensor, consume: Consumer) -> None:
            check_interrupted()
            reached.clear()
            consumer[:] = [consume]
            x_t = x_t.to(device)
            sigma = torch.full((x_t.shape[0],), t, device=device)
            conds = base.extra_conds(noise=x_t, device=device, cross_attn=context[images].to(device),
                                     pooled_output=pooled[images].to(device), guidance=conditioning.guidance)
            kwargs = {name: cond.process_cond(batch_size=x_t.shape[0], area=None).cond for name, cond in conds.items()}
            try:
                base.apply_model(x_t, sigma, transformer_options={**options, "sigmas": sigma}, **kwargs)
            except StopForward:
                pass
            check_reached(layers, reached)

        try:
            averaged = average_over_ensemble(latents, noise, t=t, run=run, micro_batch=batch, progress=progress)
        finally:
            consumer.clear()  # the clone (and its patches) is dropped with this frame
        size = self.hidden_size
        return {
            layer: EnsembleCapture(hidden.cpu(), _modulation(mod.cpu(), size), (grid[0], grid[1]))
            for layer, (hidden, mod) in averaged.items()
        }



def _capture_patch(consumer: list, reached: set, adapter: ComfyFamily, layer: int, block, tokens: slice, *,
                   stop: bool):
    """The replace patch for one block. It holds the block module and the consumer list, never the clone (a
    reference cycle would keep the clone alive in ComfyUI's loaded-model list)."""

    def patch(args: dict, extra: dict) -> dict:
        # Consumed at once (Flux blocks add into their inputs in place later). The vector handed over is the
        # block's (shift | scale | gate) [m, 3C]: ComfyUI blocks compute modulation with their own modules
        # (fp8, LoRA, offload), so it is taken from them rather than recomputed.
        consumer[0](layer, args[adapter.stream_key][:, tokens], adapter.modulation(block, layer, args))
        reached.add(layer)
        if stop:
            raise StopForward
        return extra["original_block"](args)

    return patch


def _sampled_bytes(parameter: torch.Tensor) -> bytes:
    """A strided sample of ~4k values of a weight as bytes; shape and dtype only for tensors that cannot be read
    that way (quantised formats of other packs)."""
    try:
        flat = parameter.detach().reshape(-1)
        if flat.numel() > 65536:
            flat = flat[:: flat.numel() // 4096]
        return flat.to("cpu", torch.float32).numpy().tobytes()
    except (RuntimeError, TypeError, NotImplementedError, ValueError):
        return f"{tuple(parameter.shape)}:{parameter.dtype}".encode()


def _modulation(flat: torch.Tensor, size: int) -> Modulation:
    return Modulation(shift=flat[:, :size], scale=flat[:, size : 2 * size], gate=flat[:, 2 * size :])


# --- ComfyUI runtime services the other node modules use ---------------------------------------------------
def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def progress_reporter(total: int) -> ProgressFn:
    """``progress(done, total)`` for ditf_core loops: drives the running node's progress bar (``total`` steps,
    shown from the start) and honours Cancel between steps."""
    bar = comfy.utils.ProgressBar(total)

    def report(done: int, steps: int) -> None:
        bar.update_absolute(done, steps)
        check_interrupted()

    return report


def torch_device() -> torch.device:
    return comfy.model_management.get_torch_device()


def make_room(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to offload its models until ``num_bytes`` fit on ``device`` (for models it does not manage)."""
    if device.type != "cpu":
        comfy.model_management.free_memory(num_bytes, device)


def load_clip_vision(clip_vision) -> torch.device:
    """Load a CLIP_VISION model (``comfy.clip_vision.ClipVisionModel``) onto its device the way CLIP Vision Encode
    does, for a forward pass of our own (DINOv2 fusion); returns that device."""
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    return clip_vision.load_device
