"""Massive activations at work, as MODEL patches: Massive-Activation Transport, Massive-Activation Disruption and
Detail Guidance. Each returns a patched ``model.clone()`` (the MODEL it was given is never touched) that works with
any sampler, scheduler and CFG; ``nodes/ma_runtime.py`` says what the patches do during sampling, ``comfy_host``
installs them."""

from __future__ import annotations

import re

from comfy_api.latest import io
from typing_extensions import override

from ..ditf_core.transport import Disruption, MassiveZeroing, Transport, check_window, parse_blocks
from ..ditf_core.transport.ops import check_strength, check_top_k
from ..ditf_core.transport.settings import (
    DEFAULT_BLOCKS,
    DEFAULT_DG_WEIGHT,
    DEFAULT_MASK,
    DEFAULT_TOP_K,
    MASK_HELP,
    MASK_MODES,
    check_mask_mode,
)
from . import comfy_host, ma_runtime
from .checks import MAX_SEED, check_float, check_int, image_batch
from .images_io import mask_batch
from .model import parse_conditioning

CATEGORY = "DiTF/massive activations"
TOP_K_RANGE = (1, 8192)
WEIGHT_RANGE = (0.0, 100.0)
LAYER_RANGE = (-1, 255)


def blocks_input(what: str) -> io.String.Input:
    return io.String.Input("blocks", default=DEFAULT_BLOCKS, tooltip=f"Blocks whose input {what}: 'all', or global "
                           "block indices and ranges like '0-18, 30' (Flux: 0-18 double, 19-56 single blocks; SD3: "
                           "joint blocks). Empty: none (the MODEL passes through).")


def window_inputs(what: str) -> list:
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=f"Sampling progress where "
                       f"{what} starts (0: the first step), as in ComfyUI's guidance nodes; any scheduler."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=f"Sampling progress where "
                       f"{what} ends (1: the last step)."),
    ]


def top_k_input(tooltip: str) -> io.Int.Input:
    return io.Int.Input("top_k", default=DEFAULT_TOP_K, min=TOP_K_RANGE[0], max=TOP_K_RANGE[1], tooltip=tooltip)


def model_input() -> io.Model.Input:
    return io.Model.Input("model", tooltip="A Flux or SD3/SD3.5 MODEL; it is cloned, never changed.")


def model_output(what: str) -> io.Model.Output:
    return io.Model.Output(display_name="model", tooltip=f"A clone of the MODEL with {what}; sample it with any "
                           "KSampler / sampler / scheduler / CFG.")


class MassiveActivationTransport(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFMassiveActivationTransport",
            display_name="Massive-Activation Transport (DiTF)",
            category=CATEGORY,
            description="Moves a source's massive activations into the generation (prompt interpolation from a "
            "source prompt, subject-driven generation from a reference image): X += strength * M * (X_src - X) "
            "with M = spatial mask x top-k MA channels, at the chosen blocks and steps.",
            inputs=[
                model_input(),
                blocks_input("is transported"),
                *window_inputs("transport"),
                top_k_input("Massive-activation channels transported per block and step: the top-k of the source by "
                            "|mean over image tokens|."),
                io.Combo.Input("mask", options=list(MASK_MODES), default=DEFAULT_MASK, tooltip="Spatial mask p: "
                               + "; ".join(f"{mode}: {MASK_HELP[mode]}" for mode in MASK_MODES) + "."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="0: the target "
                               "untouched; 1: the source's values in the masked channels (the paper's hard mask)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=False,
                             tooltip="Seed of the noise a source_image is noised with (the same at every step)."),
                io.Conditioning.Input("source_conditioning", optional=True, tooltip="The source prompt (prompt "
                                      "interpolation): the same generation under this text runs beside the target. "
                                      "With source_image: the text the reference is seen with."),
                io.Image.Input("source_image", optional=True, tooltip="A reference image (subject-driven "
                               "generation): its latent, noised to each step's noise level, is the source. Same "
                               "aspect ratio as the generated image."),
                io.Vae.Input("vae", optional=True, tooltip="The model's VAE, to encode source_image."),
                io.Mask.Input("spatial_mask", optional=True, tooltip="Where to transport when mask is 'mask' (white: "
                              "transport); the generated image's aspect ratio, any size."),
            ],
            outputs=[model_output("massive-activation transport")],
        )

    @classmethod
    @override
    def validate_inputs(cls, strength=None, start_percent=None, end_percent=None, mask=None, blocks=None) -> bool | str:
        try:
            _check_common(start_percent, end_percent, blocks)
            if strength is not None:
                check_strength(strength)
            if mask is not None:
                check_mask_mode(mask)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, model, blocks: str, start_percent: float, end_percent: float, top_k: int, mask: str,
                strength: float, seed: int, source_conditioning=None, source_image=None, vae=None,
                spatial_mask=None) -> io.NodeOutput:
        target = comfy_host.dit_clone(model)
        layers = parse_blocks(blocks, target.depth, target.split)
        window = check_window(start_percent, end_percent)
        spec = Transport(check_top_k(top_k, target.shape.hidden_size), check_strength(strength), check_mask_mode(mask))
        check_int("seed", seed, 0, MAX_SEED)
        user_mask = _check_spatial_mask(spatial_mask, mask)
        _check_source(target, source_conditioning, source_image, vae)
        if comfy_host.has_model_wrapper(target, "apply_model", ma_runtime.TRANSPORT_WRAPPER):
            raise ValueError("this MODEL already carries a Massive-Activation Transport: use one transport node per "
                             "MODEL chain (several sources at once are not supported)")
        if spec.strength == 0 or not layers:
            return io.NodeOutput(target.clone)  # nothing moves: the plain clone, and no source is run
        reference = None if source_image is None else comfy_host.encode_image(vae, source_image, target)
        _with_layout(target)
        for layer in layers:
            comfy_host.add_block_patch(target, layer, ma_runtime.transport_patch(
                target.adapter, target.shape.structure, layer, spec, user_mask))
        sigmas = comfy_host.sigma_window(target, *window)
        comfy_host.add_model_wrapper(target, "apply_model", ma_runtime.TRANSPORT_WRAPPER,
                                     ma_runtime.transport_wrapper(target.adapter, layers, sigmas))
        comfy_host.add_run_state(target, ma_runtime.TRANSPORT_WRAPPER, ma_runtime.RUN_KEY, _run_factory(
            source_conditioning, reference, seed))
        return io.NodeOutput(target.clone)


class MassiveActivationDisruption(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFMassiveActivationDisruption",
            display_name="Massive-Activation Disruption (DiTF)",
            category=CATEGORY,
            description="Zeroes the top-k massive-activation channels of the hidden state entering the chosen blocks "
            "(the paper's probe: generation falls apart); control: the k weakest channels instead (barely changes it).",
            inputs=[
                model_input(),
                blocks_input("is disrupted"),
                *window_inputs("disruption"),
                top_k_input("Channels zeroed per block, step and image: the top-k by |mean over image tokens|."),
                io.Boolean.Input("control", default=False, tooltip="Control experiment: zero the k channels with the "
                                 "LOWEST |mean over image tokens| instead of the massive ones."),
            ],
            outputs=[model_output("massive activations disrupted")],
        )

    @classmethod
    @override
    def validate_inputs(cls, start_percent=None, end_percent=None, blocks=None) -> bool | str:
        try:
            _check_common(start_percent, end_percent, blocks)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, model, blocks: str, start_percent: float, end_percent: float, top_k: int,
                control: bool) -> io.NodeOutput:
        target = comfy_host.dit_clone(model)
        layers = parse_blocks(blocks, target.depth, target.split)
        window = comfy_host.sigma_window(target, *check_window(start_percent, end_percent))
        if not isinstance(control, bool):
            raise TypeError(f"control must be true or false, got {control!r}")
        spec = Disruption(check_top_k(top_k, target.shape.hidden_size), control)
        if layers:
            _with_layout(target)
        for layer in layers:
            comfy_host.add_block_patch(target, layer, ma_runtime.token_patch(
                target.adapter, target.shape.structure, layer, spec.apply, window))
        return io.NodeOutput(target.clone)


class DetailGuidance(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFDetailGuidance",
            display_name="Detail Guidance (DiTF)",
            category=CATEGORY,
            description="Detail Guidance (Gan et al., ICLR 2026): adds w * (D(c) - D_m(c)) after CFG, D_m the "
            "prediction with the massive activations at layer m zeroed; one extra model pass per step.",
            inputs=[
                model_input(),
                io.Int.Input("layer", default=-1, min=LAYER_RANGE[0], max=LAYER_RANGE[1], tooltip="Layer m: the "
                             "global block whose input loses its massive activations in the perturbed pass. -1: the "
                             "family default (the DiTF layer: Flux.1 28, SD3 ~0.49 of the depth)."),
                io.Float.Input("weight", default=DEFAULT_DG_WEIGHT, min=WEIGHT_RANGE[0], max=WEIGHT_RANGE[1],
                               step=0.05, tooltip="w: 0 turns Detail Guidance off (no extra pass); larger values "
                               "push the image away from its massive-activation-free version (more local detail)."),
                io.String.Input("channels", default="auto", tooltip="Channels zeroed at layer m: auto (the massive "
                                "channels found in each image at each step: median |activation| >= 100x the map's) or "
                                "numbers like 154, 1446 (e.g. the Massive-Activation Inspector's channels output)."),
                *window_inputs("Detail Guidance"),
            ],
            outputs=[model_output("Detail Guidance")],
        )

    @classmethod
    @override
    def validate_inputs(cls, weight=None, channels=None, start_percent=None, end_percent=None) -> bool | str:
        try:
            _check_common(start_percent, end_percent, None)
            if weight is not None:
                check_float("weight", weight, *WEIGHT_RANGE)
            if channels is not None:
                _parse_channels(channels)
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, model, layer: int, weight: float, channels: str, start_percent: float,
                end_percent: float) -> io.NodeOutput:
        target = comfy_host.dit_clone(model)
        check_int("layer", layer, *LAYER_RANGE)
        if layer == -1:
            layer = target.adapter.core.defaults(target.shape.structure).layer
        if layer >= target.depth:
            raise ValueError(f"layer {layer} is out of range for this {target.adapter.core.label}: use "
                             f"0..{target.depth - 1} or -1 for the default")
        weight = check_float("weight", weight, *WEIGHT_RANGE)
        fixed = _parse_channels(channels)
        if fixed is not None and max(fixed, default=0) >= target.shape.hidden_size:
            raise ValueError(f"channels: this model has channels 0..{target.shape.hidden_size - 1}, got {max(fixed)}")
        window = comfy_host.sigma_window(target, *check_window(start_percent, end_percent))
        if weight == 0 or fixed == ():
            return io.NodeOutput(target.clone)  # D + 0 or D_m = D: the plain clone, without the extra pass
        _with_layout(target)
        key = target.patch_key(layer)
        zero = ma_runtime.token_patch(target.adapter, target.shape.structure, layer, MassiveZeroing(fixed).apply)
        comfy_host.add_post_cfg_function(target, ma_runtime.detail_guidance_function(
            lambda args: comfy_host.perturbed_conditional(args, key, zero), weight, window))
        return io.NodeOutput(target.clone)


def _with_layout(target) -> None:
    """The token-layout wrapper all massive-activation patches read; one per MODEL, outermost (added first)."""
    if not comfy_host.has_model_wrapper(target, "apply_model", ma_runtime.LAYOUT_WRAPPER):
        comfy_host.add_model_wrapper(target, "apply_model", ma_runtime.LAYOUT_WRAPPER,
                                     ma_runtime.layout_wrapper(target.adapter))


def _run_factory(conditioning, reference, seed):
    """The per-run source (it holds tensors and the seed, never the MODEL: no reference cycle through the clone)."""
    return lambda start: ma_runtime.create_run(start, conditioning=conditioning, reference=reference, seed=seed)


def _check_common(start_percent, end_percent, blocks) -> None:
    if start_percent is not None and end_percent is not None:
        check_window(start_percent, end_percent)
    else:
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            if value is not None:
                check_float(name, value, 0.0, 1.0)
    if blocks is not None:
        parse_blocks(blocks, 10**6)  # the syntax; the range needs the model (checked when it runs)


def _check_source(target, conditioning, image, vae) -> None:
    """A source is connected and usable: a CONDITIONING of this model's widths, an IMAGE with a VAE."""
    if conditioning is None and image is None:
        raise ValueError("connect a source: source_conditioning (a prompt to interpolate from) or source_image "
                         "(a reference image, with vae)")
    if conditioning is not None:
        shape = target.shape
        try:
            parse_conditioning(conditioning, shape.context_dim, shape.pooled_dim, target.adapter.core.label)
        except (TypeError, ValueError) as error:
            raise type(error)(f"source_conditioning: {error}") from None
    if image is not None:
        if vae is None:
            raise ValueError("source_image needs the model's VAE: connect vae")
        image_batch(image)  # the IMAGE checks (shape, range, NaN), by name


def _check_spatial_mask(spatial_mask, mode: str):
    mask = mask_batch(spatial_mask, "spatial_mask")
    if mode == "mask" and mask is None:
        raise ValueError("mask is 'mask' but nothing is connected to spatial_mask; connect a MASK or pick another mode")
    if mode != "mask" and mask is not None:
        raise ValueError(f"a MASK is connected to spatial_mask but mask is {mode!r}; set mask to 'mask' to use it, or "
                         "disconnect it")
    if mask is not None and (float(mask.min()) < 0.0 or float(mask.max()) > 1.0):
        raise ValueError("spatial_mask values must lie in [0, 1]")
    return mask


def _parse_channels(text) -> tuple[int, ...] | None:
    """The channels widget: None for auto, () for none (the Inspector's answer when nothing is massive), else the
    channel numbers."""
    if not isinstance(text, str):
        raise TypeError(f"channels must be text ('auto' or numbers like 154, 1446), got {type(text).__name__}")
    keyword = text.strip().lower()
    if keyword == "auto":
        return None
    if keyword in ("none", ""):
        return ()
    try:
        channels = tuple(int(part) for part in re.split(r"[,;\s]+", keyword) if part)
    except ValueError:
        raise ValueError(f"channels must be 'auto' or channel numbers like 154, 1446; got {text!r}") from None
    if any(channel < 0 for channel in channels):
        raise ValueError(f"channels must be 0 or more, got {text!r}")
    return channels
