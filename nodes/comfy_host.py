"""The ComfyUI host: DiTF capture on the MODEL / VAE / CLIP objects ComfyUI already has loaded.

The only module of the pack that touches ModelPatcher and ``comfy.model_management``. Capture (design §3):

* ``clone = model.clone()`` - the user's MODEL is never patched - and per requested block either
  ``clone.set_model_patch_replace(fn, "dit", "double_block" | "single_block", i)`` (families whose forward has
  ComfyUI's ``patches_replace["dit"]``), or, for families without it (HiDream, Lumina2, PixArt),
  ``clone.add_object_patch("diffusion_model.<blocks>.<i>", copy)``: a ModelPatcher object patch that puts a
  shallow copy of the block in its place while the clone is loaded. The copy shares the block's parameters under
  the same names (so LoRA and low-VRAM weight patching still reach them) and its ``forward`` calls ``fn`` first.
  ComfyUI applies object patches when it loads the clone; this module takes its own back off the shared model
  right after the capture, whatever happened;
* ``fn`` hands over the image tokens entering the block and the block's own AdaLN modulation, computed by the
  block's own module, then runs the original block - or raises a private ``StopForward`` at the deepest requested
  block. What differs per family (mechanism, patch keys / block paths, where the image tokens sit, how a block
  modulates, how the model is called) is described by the family adapters in ``nodes/families``; this module is
  the mechanism;
* ``clone.model.apply_model(x_t, sigma, transformer_options=<the clone's>, **conds)``: x_t is noised with the
  model's own ``model_sampling.noise_scaling`` at the adapter's sigma for DiTF time t (flow models: sigma = t,
  ``sigma * noise + (1 - sigma) * x0``, the recipe's ``x_t``; epsilon models: the DDPM timestep's sigma);
* the clone is dropped afterwards, whatever happened, so nothing stays patched.

The massive-activation nodes patch a MODEL clone for sampling through the helpers at the end of this module (block
patches that chain with other nodes' patches, keyed model wrappers, post-CFG functions, a per-run state); what the
patches do is in ``nodes/ma_runtime.py``.

Weights stay wherever ComfyUI keeps them (fp8 / bf16 / partly offloaded): ``load_models_gpu`` loads the clone
exactly as a sampler would. ComfyUI's ``VAE.encode`` returns the posterior mode, so the E ensemble members share
one clean latent and differ by their noise only (the diffusers host samples E posterior latents).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch

from ..ditf_core.capture import Consumer, check_reached
from ..ditf_core.families import DiTFamily, FamilyDefaults, Modulation
from ..ditf_core.images import resize_for_model
from ..ditf_core.pipeline import draw_noise
from ..ditf_core.recipe import EnsembleCapture, ProgressFn, average_over_ensemble, kept_bytes
from .families import COMFY_FAMILIES, ComfyFamily, HostShape, comfy_family_for
from .families.base import zero_text_streams
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

    def encode(self, pixels: torch.Tensor, mapping, ensemble: int, generator: torch.Generator) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> clean normalised latents [1, B, C, h, w] (one per image)."""
        check_interrupted()
        resized = resize_for_model(pixels, mapping.model_size).movedim(1, -1)
        if getattr(self.vae, "latent_dim", 2) == 3:
            # A video VAE (Wan, Qwen-Image) would read the batch as the frames of one clip: encode each image as a
            # clip of one frame, and keep the one latent frame.
            raw = torch.cat([self.vae.encode(image[None]) for image in resized])
            latents = self.model.model.process_latent_in(raw.float())[:, :, 0].float().cpu()
        else:
            latents = self.model.model.process_latent_in(self.vae.encode(resized).float()).float().cpu()
        # The diffusers host draws E posterior samples here; draw (and ignore: ComfyUI gives the posterior mode)
        # the same numbers so that both hosts noise with the same draws for a seed.
        draw_noise((ensemble, *latents.shape), generator)
        return latents.unsqueeze(0)

    def encode_prompt(self, prompt: str) -> TextConditioning:
        conditioning = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        return parse_conditioning(conditioning, self.context_dim, self.pooled_dim, self.family.label, source="prompt",
                                  streams=self.text_streams)

    @property
    def text_streams(self) -> tuple[str, ...]:
        return tuple(self.shape.text_streams)

    def zero_conditioning(self) -> TextConditioning:
        tokens = self.family.zero_text_tokens
        context = torch.zeros(1, tokens, self.context_dim)
        streams = zero_text_streams(self.shape.text_streams, tokens)
        return TextConditioning(context, torch.zeros(1, self.pooled_dim or 1), DEFAULT_GUIDANCE, "zero", streams)

    @property
    def device(self) -> torch.device:
        """Where the capture runs (and keeps its sums): ComfyUI's torch device."""
        return torch_device()

    def capture(self, latents, noise, *, t: float, layers: list[int], conditioning: TextConditioning,
                progress: ProgressFn | None = None, micro_batch: int | None = None) -> dict[int, EnsembleCapture]:
        """Block inputs of ``layers`` averaged over the ensemble, one early-exit pass per draw (all images, or
        ``micro_batch`` images per pass)."""
        batch = latents.shape[1]
        micro_batch = micro_batch or batch
        patch = self.family.patch
        grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)
        context = conditioning.context.expand(batch, *conditioning.context.shape[1:])
        pooled = conditioning.pooled.expand(batch, *conditioning.pooled.shape[1:])
        streams = {key: value.expand(batch, *value.shape[1:]) for key, value in conditioning.streams.items()}
        reached: set[int] = set()
        consumer: list[Consumer] = []  # the running pass's consumer, read by the patches
        clone = self.model.clone()
        object_paths = self._patch_blocks(clone, layers, consumer, reached, context.shape[1], grid[0] * grid[1])
        base = clone.model
        shape = list(self.adapter.model_input(latents[0, :micro_batch]).shape)
        # room for one pass's activations and for the running sums the capture keeps on the device
        required = base.memory_required(shape) + kept_bytes(batch, grid[0] * grid[1], self.hidden_size, len(layers))
        sigma_value = self.adapter.sigma(base.model_sampling, t)
        try:
            comfy.model_management.load_models_gpu([clone], memory_required=required, minimum_memory_required=required)
            device = clone.load_device  # where load_models_gpu put the weights (as samplers do)
            options = clone.model_options["transformer_options"]

            def add_noise(clean: torch.Tensor, draws: torch.Tensor, _t: float) -> torch.Tensor:
                sigma = torch.full((clean.shape[0],), sigma_value)
                return base.model_sampling.noise_scaling(sigma, draws, clean)  # the model's own noising

            def run(x_t: torch.Tensor, images: torch.Tensor, consume: Consumer) -> None:
                check_interrupted()
                reached.clear()
                consumer[:] = [consume]
                x = self.adapter.model_input(x_t.to(device))
                sigma = torch.full((x.shape[0],), sigma_value, device=device)
                text = {"cross_attn": context[images].to(device), "pooled_output": pooled[images].to(device),
                        "guidance": conditioning.guidance, **{k: v[images].to(device) for k, v in streams.items()}}
                conds = base.extra_conds(noise=x, device=device, **self.adapter.cond_kwargs(text, x))
                kwargs = {name: c.process_cond(batch_size=x.shape[0], area=None).cond for name, c in conds.items()}
                try:
                    base.apply_model(x, sigma, transformer_options={**options, "sigmas": sigma}, **kwargs)
                except StopForward:
                    pass
                check_reached(layers, reached)

            averaged = average_over_ensemble(latents, noise, t=t, run=run, micro_batch=micro_batch, progress=progress,
                                              add_noise=add_noise)
        finally:
            consumer.clear()  # the clone (and its patches) is dropped with this frame
            _restore_objects(clone, object_paths)
        size = self.hidden_size
        return {
            layer: EnsembleCapture(hidden.cpu(), _modulation(mod.cpu(), size), (grid[0], grid[1]))
            for layer, (hidden, mod) in averaged.items()
        }

    def _patch_blocks(self, clone, layers: list[int], consumer: list, reached: set, text_tokens: int,
                      image_tokens: int) -> list[str]:
        """Patch every block up to the deepest requested one on ``clone`` with the adapter's mechanism: each checks
        Cancel first (one pass at 2048 px takes minutes on a CPU); the requested ones report their input and the
        deepest stops the pass. Returns the object-patch paths."""
        blocks = self.family.blocks(self.structure)
        replaced = clone.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        paths = []
        for layer in range(layers[-1] + 1):
            report = None
            if layer in layers:
                tokens = self.adapter.image_slice(self.structure, layer, text_tokens, image_tokens)
                report = _block_reporter(consumer, reached, self.adapter, layer, blocks[layer], tokens)
            stop = layer == layers[-1]
            if self.adapter.mechanism == "object_patch":
                path = self.adapter.block_path(self.structure, layer)
                clone.add_object_patch(path, _reporting_copy(blocks[layer], self.adapter, report, stop))
                paths.append(path)
            else:
                key = self.adapter.patch_key(self.structure, layer)
                patch = _replace_patch(report, stop)
                if report is None:
                    # A block that only checks Cancel runs as it would have, through another node's patch if there
                    # is one; a captured block runs the original (another node's patch on it is bypassed: README).
                    patch = _chain(patch, replaced.get(key))
                clone.set_model_patch_replace(patch, "dit", *key)
        return paths


def _block_reporter(consumer: list, reached: set, adapter: ComfyFamily, layer: int, block, tokens: slice):
    """``report(args)``: hand block ``layer``'s image tokens and modulation to the running pass's consumer. It holds
    the block module and the consumer list, never the clone (a reference cycle would keep the clone alive in
    ComfyUI's loaded-model list)."""

    def report(args: dict) -> None:
        # Consumed at once (Flux blocks add into their inputs in place later). The vector handed over is the
        # block's (shift | scale | gate) [m, 3C]: ComfyUI blocks compute modulation with their own modules
        # (fp8, LoRA, offload), so it is taken from them rather than recomputed.
        consumer[0](layer, args[adapter.stream_key][:, tokens], adapter.modulation(block, layer, args))
        reached.add(layer)

    return report


def _replace_patch(report, stop: bool):
    """A ``patches_replace["dit"]`` patch: honour Cancel, report (when ``report`` is given), then stop or run the
    block."""

    def patch(args: dict, extra: dict) -> dict:
        check_interrupted()
        if report is not None:
            report(args)
        if stop:
            raise StopForward
        return extra["original_block"](args)

    return patch


def _reporting_copy(block, adapter: ComfyFamily, report, stop: bool):
    """The object patch for one block: a shallow copy of ``block`` (the same parameter, buffer and child-module
    dicts, so weights keep their names) whose ``forward`` honours Cancel, reports the call (when ``report`` is given),
    then stops or runs the block."""
    original = block.forward
    stand_in = copy.copy(block)

    def forward(*args, **kwargs):
        check_interrupted()
        if report is not None:
            report(adapter.call_args(args, kwargs))
        if stop:
            raise StopForward
        return original(*args, **kwargs)

    stand_in.forward = forward
    return stand_in


def _restore_objects(clone, paths: list[str]) -> None:
    """Put the original blocks back on the shared model (ModelPatcher keeps them in ``object_patches_backup``
    while an object patch is applied), so nothing of ours stays on it once the capture is over."""
    for path in paths:
        original = clone.object_patches_backup.pop(path, None)
        if original is not None:
            comfy.utils.set_attr(clone.model, path, original)


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


def free_memory(device: torch.device | None = None) -> int:
    """Bytes free for new tensors on ``device`` (default: ComfyUI's torch device), as ComfyUI counts them: device
    memory (torch's cached blocks included) on a GPU, available RAM on the CPU."""
    return int(comfy.model_management.get_free_memory(device or torch_device(), torch_free_too=False))


def make_room(num_bytes: int, device: torch.device) -> None:
    """Ask ComfyUI to offload its models until ``num_bytes`` fit on ``device`` (for models it does not manage)."""
    if device.type != "cpu":
        comfy.model_management.free_memory(num_bytes, device)


def load_clip_vision(clip_vision) -> torch.device:
    """Load a CLIP_VISION model (``comfy.clip_vision.ClipVisionModel``) onto its device the way CLIP Vision Encode
    does, for a forward pass of our own (DINOv2 fusion); returns that device."""
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    return clip_vision.load_device


# --- model patches: the massive-activation nodes (nodes/ma_runtime.py says what the patches do) -----------------
@dataclass(frozen=True)
class DiTClone:
    """``model.clone()`` of a supported DiT MODEL, with its family adapter and shape; the user's MODEL is untouched."""

    clone: Any
    adapter: ComfyFamily
    shape: HostShape

    @property
    def depth(self) -> int:
        return len(self.adapter.core.blocks(self.shape.structure))

    @property
    def split(self) -> int:
        return self.adapter.core.split(self.shape.structure)

    def patch_key(self, layer: int) -> tuple[str, int]:
        return self.adapter.patch_key(self.shape.structure, layer)


def dit_clone(model, name: str = "model") -> DiTClone:
    """A patchable clone of ``model`` (input ``name``), or an error naming the input and the supported families."""
    if getattr(model, "model", None) is None or not hasattr(model, "clone"):
        raise TypeError(f"{name} must be a ComfyUI MODEL (from a checkpoint or diffusion model loader), "
                        f"got {type(model).__name__}")
    diffusion = model.get_model_object("diffusion_model")
    adapter = comfy_family_for(model.model, diffusion)
    if adapter.mechanism != "dit_patch":
        # These patches act while sampling, through patches_replace["dit"], which this family's forward never reads:
        # they would silently do nothing.
        patchable = ", ".join(family.supported for family in COMFY_FAMILIES if family.mechanism == "dit_patch")
        raise ValueError(f"{name} is a {adapter.supported} model, whose ComfyUI forward has no block-replace patch "
                         f"points, so massive-activation patches cannot act on it; use one of: {patchable}")
    return DiTClone(model.clone(), adapter, adapter.shape(diffusion))


def add_block_patch(target: DiTClone, layer: int, patch) -> None:
    """Replace-patch global block ``layer`` of the clone; a replace patch already there (another node's) still runs:
    ours goes first and hands over to it instead of to the block (``patches_replace`` keeps one entry per block)."""
    target.clone.model_options = options_with_block_patch(target.clone.model_options, target.patch_key(layer), patch)


def options_with_block_patch(model_options: dict, key: tuple[str, int], patch) -> dict:
    """A copy of ``model_options`` with ``patch`` on the block of patch ``key``, chained like :func:`add_block_patch`
    (for the extra passes of guidance functions, which patch only their own copy, as SkipLayerGuidanceDiT does)."""
    existing = model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {}).get(key)
    chained = _chain(patch, existing)
    return comfy.model_patcher.set_model_options_patch_replace(dict(model_options), chained, "dit", *key)


def _chain(patch, existing):
    if existing is None:
        return patch

    def chained(args: dict, extra: dict) -> dict:
        return patch(args, {**extra, "original_block": lambda block_args: existing(block_args, extra)})

    return chained


def has_model_wrapper(target: DiTClone, stage: str, key: str) -> bool:
    """Whether the clone carries a wrapper ``key`` at ``stage`` ("apply_model" or "sampler_sample")."""
    return bool(target.clone.get_wrappers(_WRAPPER_STAGES[stage], key))


def add_model_wrapper(target: DiTClone, stage: str, key: str, wrapper) -> None:
    """A keyed model wrapper: "apply_model" wrappers see every model call of a sampler (``executor, x, sigma,
    c_concat, c_crossattn, control, transformer_options, **conds``); wrappers stack, none replaces another."""
    target.clone.add_wrapper_with_key(_WRAPPER_STAGES[stage], key, wrapper)


_WRAPPER_STAGES = {"apply_model": comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                   "sampler_sample": comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE}


def add_post_cfg_function(target: DiTClone, function) -> None:
    """``function(args) -> denoised`` after CFG at every step (appended: other nodes' functions keep running)."""
    target.clone.set_model_sampler_post_cfg_function(function)


def sigma_window(target: DiTClone, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(highest, lowest) sigma of the sampling-percent window, as ComfyUI's own guidance nodes compute it."""
    sampling = target.clone.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def perturbed_conditional(args: dict, key: tuple[str, int], patch) -> torch.Tensor:
    """The conditional prediction of a post-CFG step with ``patch`` on the block of patch ``key`` (one extra model
    pass of the positive rows, like SkipLayerGuidanceDiT / PerturbedAttentionGuidance)."""
    options = options_with_block_patch(args["model_options"].copy(), key, patch)
    (prediction,) = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], options)
    return prediction


@dataclass(frozen=True)
class SamplingStart:
    """How one sampling run starts, for a source that runs beside it (ComfyUI's KSAMPLER conventions).

    noise / latent_image: [B, C, H, W] as the sampler got them (latent_image in model space); start: the sampler's
    first x (``noise_scaling(sigmas[0], noise, latent_image)``); cfg: the guider's CFG scale; noise_scaling(sigma,
    noise, latent): the model's forward process; encode(conditioning): a CONDITIONING as the model-call keyword
    tensors [B, ...] of its rows (``c_crossattn``, ``y``, ``guidance``, ...), encoded like the run's own prompts.
    """

    noise: torch.Tensor
    latent_image: torch.Tensor
    sigmas: torch.Tensor
    start: torch.Tensor
    cfg: float
    noise_scaling: Any
    encode: Any


def add_run_state(target: DiTClone, key: str, options_key: str, create) -> None:
    """Give every sampling run of the clone its own state: ``create(SamplingStart)``, kept in that run's
    ``transformer_options[options_key]`` (a per-run copy: nothing outlives the run, nothing leaks into the MODEL)."""

    def wrapper(executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar):
        sampling = guider.inner_model.model_sampling
        sampler = executor.class_obj
        max_denoise = sampler.max_denoise(guider, sigmas) if hasattr(sampler, "max_denoise") else False
        latent = latent_image if latent_image is not None else torch.zeros_like(noise)

        def encode(conditioning) -> dict[str, torch.Tensor]:
            conds = comfy.samplers.encode_model_conds(
                guider.inner_model.extra_conds, comfy.sampler_helpers.convert_cond(conditioning), noise, noise.device,
                "positive", latent_image=latent, denoise_mask=denoise_mask, seed=extra_args.get("seed"))
            model_conds = conds[0]["model_conds"]
            return {name: cond.process_cond(batch_size=noise.shape[0], device=noise.device, area=None).cond
                    for name, cond in model_conds.items()}

        start = SamplingStart(noise, latent, sigmas, sampling.noise_scaling(sigmas[0], noise, latent, max_denoise),
                              float(getattr(guider, "cfg", 1.0)),
                              lambda sigma, n, x: sampling.noise_scaling(sigma, n, x, False), encode)
        options = extra_args["model_options"]
        transformer_options = {**options.get("transformer_options", {}), options_key: create(start)}
        extra_args = {**extra_args, "model_options": {**options, "transformer_options": transformer_options}}
        return executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)

    target.clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, key, wrapper)


def encode_image(vae, image: torch.Tensor, target: DiTClone, name: str = "vae") -> torch.Tensor:
    """IMAGE [B, H, W, C] -> the model's normalised latents [B, C, h, w] (float32, CPU) via ComfyUI's VAE; the image
    is cropped to whole latent cells first, as VAE Encode does."""
    if not hasattr(vae, "encode") or not hasattr(vae, "latent_channels"):
        raise TypeError(f"{name} must be a ComfyUI VAE (from a VAE or checkpoint loader), got {type(vae).__name__}")
    needed = target.clone.model.latent_format.latent_channels
    if vae.latent_channels != needed:
        raise ValueError(f"{name} makes {vae.latent_channels}-channel latents but this {target.adapter.core.label} "
                         f"needs {needed}: wire the model's own VAE")
    factor = vae.spacial_compression_encode()
    height, width = (image.shape[1] // factor) * factor, (image.shape[2] // factor) * factor
    if height == 0 or width == 0:
        raise ValueError(f"the image ({image.shape[2]}x{image.shape[1]} px) is smaller than one latent cell")
    raw = vae.encode(image[:, :height, :width, :3])
    return target.clone.model.process_latent_in(raw.float()).float().cpu()
