"""The ComfyUI-host runtime of the massive-activation patches: what their block patches, model wrappers and post-CFG
functions do during sampling. ``nodes/comfy_host.py`` installs them on a MODEL clone; this module never imports
ComfyUI. The per-block arithmetic is ``ditf_core.transport`` (shared with the diffusers host).

Every patched forward pass learns its token layout (text tokens, token grid, sigma) from an outer ``apply_model``
wrapper, so block patches find the image tokens in any family's stream (``ComfyFamily.image_tokens``).

A transported model call (one call of the sampler's model at sigma s; ComfyUI batches its rows in chunks of B rows,
each a conditional (0) or unconditional (1) chunk, as ``cond_or_uncond`` says):

1. the source latent at s: the trajectory advanced to s, or the reference noised to s (``ditf_core.transport.source``);
2. the source pass - a mirror of the call: the same chunks in the same order (an image source: only the conditional
   chunks), the source latent in every chunk and the source conditioning in the conditional ones, so a source equal
   to the target computes exactly what the target computes. Its block patches keep the source's image tokens of the
   conditional rows at the transported blocks; its predictions advance the trajectory (CFG included);
3. the target pass: the call itself; its block patches move the conditional rows' image tokens towards the kept ones.

Two passes inside the one model call rather than one batched ``[target; source]`` pass (the issue's suggestion; our
choice, README "Massive activations at work"): rows of a batched forward differ from the same rows run alone by a
few ulps (BLAS blocking), which would break "source == target gives the plain sample bit for bit"; separate passes
also let the source prompt have another text length and keep ControlNet residuals with their own rows. The
arithmetic is the same; the extra memory is the source's image tokens at the transported blocks, for one call.

The unconditional rows are never transported: CFG then extrapolates from the plain unconditional prediction towards
the transported conditional one, and the negative prompt keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..ditf_core.transport import NoisedReference, SourceTrajectory, Transport, detail_guidance, mask_to_grid
from ..ditf_core.transport.source import COND, UNCOND
from .families import ComfyFamily, TokenLayout

LAYOUT_KEY = "ditf_ma_layout"  # transformer_options: the TokenLayout of the running pass
PASS_KEY = "ditf_ma_transport_pass"  # transformer_options: SourcePass / TargetPass of a transported call
RUN_KEY = "ditf_ma_transport_run"  # transformer_options of one sampling run: its TransportRun
LAYOUT_WRAPPER = "ditf_ma_layout"
TRANSPORT_WRAPPER = "ditf_ma_transport"


class SourceCaptured(Exception):
    """Ends an image source's pass at the deepest transported block (its prediction is not needed)."""


@dataclass
class SourcePass:
    """A source pass: keep the image tokens of ``rows`` (pass-local) at each transported block, at ``positions`` of
    the kept tensor (the order of the target's conditional rows)."""

    stash: dict[int, torch.Tensor]
    rows: torch.Tensor
    positions: torch.Tensor
    total: int
    stop_at: int | None  # raise SourceCaptured after keeping this block (None: run the whole model)

    def keep(self, layer: int, tokens: torch.Tensor) -> None:
        if layer not in self.stash:
            self.stash[layer] = tokens.new_empty((self.total, *tokens.shape[1:]))
        self.stash[layer][self.positions.to(tokens.device)] = tokens[self.rows.to(tokens.device)]


@dataclass
class TargetPass:
    """The target pass: transport into ``rows`` (the conditional rows) from the kept source tokens; ``images``:
    the generated image (0..B-1) each of those rows belongs to (for a per-image MASK)."""

    stash: dict[int, torch.Tensor]
    rows: torch.Tensor
    images: torch.Tensor


@dataclass
class TransportRun:
    """One sampling run's source: the latent it follows and the model-call conditioning of its conditional rows
    (None: the target's own conditional rows are used)."""

    source: SourceTrajectory | NoisedReference
    conditioning: dict[str, torch.Tensor] | None


# --- layout ---------------------------------------------------------------------------------------------------
def layout_wrapper(adapter: ComfyFamily):
    """The outer ``apply_model`` wrapper every massive-activation patch relies on."""

    def wrapper(executor, x, t, c_concat, c_crossattn, control, options, **conds):
        layout = adapter.token_layout(x, c_crossattn, t)
        return executor(x, t, c_concat, c_crossattn, control, {**options, LAYOUT_KEY: layout}, **conds)

    return wrapper


def in_window(layout: TokenLayout, high: float, low: float) -> bool:
    """Whether the pass's sigma lies in the sampling window [low, high] (ComfyUI's start/end percent as sigmas)."""
    return low <= layout.sigma <= high


# --- block patches ----------------------------------------------------------------------------------------------
def token_patch(adapter: ComfyFamily, structure, layer: int, apply, window: tuple[float, float] | None = None):
    """A replace patch that runs block ``layer`` on ``apply(image tokens [m, N, C])`` of every row, inside the sigma
    ``window`` (None: always). Used by Disruption and by Detail Guidance's perturbed pass."""

    def patch(args: dict, extra: dict) -> dict:
        layout = args.get("transformer_options", {}).get(LAYOUT_KEY)
        if layout is None or (window is not None and not in_window(layout, *window)):
            return extra["original_block"](args)
        tokens = adapter.image_tokens(structure, layer, args, layout)
        return extra["original_block"](adapter.with_image_tokens(structure, layer, args, layout, apply(tokens)))

    return patch


def transport_patch(adapter: ComfyFamily, structure, layer: int, spec: Transport, user_mask: torch.Tensor | None):
    """The replace patch of a transported block: keeps the source's tokens in a source pass, moves the target's
    conditional rows towards them in the target pass, and does nothing in any other pass."""

    def patch(args: dict, extra: dict) -> dict:
        options = args.get("transformer_options", {})
        state, layout = options.get(PASS_KEY), options.get(LAYOUT_KEY)
        if state is None or layout is None:
            return extra["original_block"](args)
        tokens = adapter.image_tokens(structure, layer, args, layout)
        if isinstance(state, SourcePass):
            state.keep(layer, tokens)
            if state.stop_at == layer:
                raise SourceCaptured
            return extra["original_block"](args)
        rows = state.rows.to(tokens.device)
        mask = None
        if user_mask is not None:
            grid_mask = mask_to_grid(user_mask, layout.grid, "spatial_mask").to(tokens.device)
            mask = grid_mask[state.images.to(tokens.device) % grid_mask.shape[0]]
        moved = spec.apply(tokens[rows], state.stash[layer].to(tokens.device), mask)
        return extra["original_block"](adapter.with_image_tokens(structure, layer, args, layout, moved, rows))

    return patch


# --- the transported model call -----------------------------------------------------------------------------------
def transport_wrapper(adapter: ComfyFamily, layers: list[int], window: tuple[float, float]):
    """The ``apply_model`` wrapper that runs the source pass before each model call of a sampling run."""
    high, low = window

    def wrapper(executor, x, t, c_concat, c_crossattn, control, options, **conds):
        run: TransportRun | None = options.get(RUN_KEY)
        kinds = list(options.get("cond_or_uncond") or [])
        if run is None or not kinds:  # not a sampling call (or ComfyUI changed): the model as it is
            return executor(x, t, c_concat, c_crossattn, control, options, **conds)
        sigma = float(t.reshape(-1)[0])
        active = low <= sigma <= high
        follows = run.source.needs_predictions and sigma > low  # a trajectory needs every step up to the window's end
        mirror = [j for j, kind in enumerate(kinds) if kind == COND or run.source.needs_predictions]
        if not (active or follows) or not mirror:
            return executor(x, t, c_concat, c_crossattn, control, options, **conds)
        rows = x.shape[0] // len(kinds)
        _check_call(run, x, rows, len(kinds))
        latent = run.source.latent_at(t).to(x.dtype)
        stash: dict[int, torch.Tensor] = {}
        calls = {"c_concat": c_concat, "c_crossattn": c_crossattn, **conds}
        outputs = _source_passes(executor, adapter, run, x, t, calls, options, kinds, mirror, rows, latent,
                                 stash if active else None, max(layers))
        for kind in (COND, UNCOND):
            chunk = next((j for j in mirror if kinds[j] == kind and outputs.get(j) is not None), None)
            if chunk is not None:
                run.source.record(t, kind, outputs[chunk])
        conditional = [j for j, kind in enumerate(kinds) if kind == COND]
        if active and conditional and stash:
            target_rows = torch.cat([torch.arange(j * rows, (j + 1) * rows) for j in conditional])
            images = torch.arange(rows).repeat(len(conditional))
            options = {**options, PASS_KEY: TargetPass(stash, target_rows, images)}
        return executor(x, t, c_concat, c_crossattn, control, options, **conds)

    return wrapper


def _check_call(run: TransportRun, x: torch.Tensor, rows: int, chunks: int) -> None:
    if rows * chunks != x.shape[0] or rows != run.source.batch:
        raise ValueError(
            f"Massive-Activation Transport: the model call has {x.shape[0]} rows in {chunks} chunks but the source "
            f"follows {run.source.batch} images; combined conditioning of several batch sizes is not supported"
        )
    if tuple(x.shape[-2:]) != tuple(run.source.shape[-2:]):
        raise ValueError(
            f"Massive-Activation Transport: the model is called on a latent crop {list(x.shape[-2:])} of the "
            f"{list(run.source.shape[-2:])} latent (area conditioning such as ConditioningSetArea); transport needs "
            "whole-image conditioning"
        )


def _source_passes(executor, adapter, run, x, t, calls, options, kinds, mirror, rows, latent, stash, deepest):
    """Run the source mirror of a call; returns {chunk index: denoised rows [B, ...] or None (pass stopped early)}.

    One pass when the source conditioning fits the call's tensors (then a source equal to the target computes
    exactly what the target computes), else one pass per chunk."""
    conditioning = run.conditioning or {}
    fits = all(calls.get(name) is None or (isinstance(calls[name], torch.Tensor)
                                           and calls[name].shape[1:] == value.shape[1:])
               for name, value in conditioning.items())
    conditional = [j for j, kind in enumerate(kinds) if kind == COND]
    outputs: dict[int, torch.Tensor | None] = {}
    for group in [mirror] if fits else [[j] for j in mirror]:
        args = _mirror_arguments(calls, conditioning, group, kinds, rows, x.shape[0])
        keep = [(position, j) for position, j in enumerate(group) if kinds[j] == COND]
        pass_options = {**options, "cond_or_uncond": [kinds[j] for j in group],
                        "uuids": [options.get("uuids", [None] * len(kinds))[j] for j in group]}
        pass_options.pop(PASS_KEY, None)
        if stash is not None and keep:
            local = torch.cat([torch.arange(p * rows, (p + 1) * rows) for p, _ in keep])
            into = torch.cat([torch.arange(conditional.index(j) * rows, (conditional.index(j) + 1) * rows)
                              for _, j in keep])
            pass_options[PASS_KEY] = SourcePass(stash, local, into, len(conditional) * rows,
                                                None if run.source.needs_predictions else deepest)
        source_x = latent.repeat(len(group), *([1] * (latent.ndim - 1)))
        c_concat, c_crossattn = args.pop("c_concat", None), args.pop("c_crossattn", None)
        pass_options[LAYOUT_KEY] = adapter.token_layout(source_x, c_crossattn, t)
        try:
            denoised = executor(source_x, t[: len(group) * rows], c_concat, c_crossattn, None, pass_options, **args)
        except SourceCaptured:
            denoised = None
        for position, j in enumerate(group):
            outputs[j] = None if denoised is None else denoised[position * rows : (position + 1) * rows]
    return outputs


def _mirror_arguments(calls: dict, conditioning: dict, group: list[int], kinds: list[int], rows: int,
                      total: int) -> dict:
    """The model-call arguments of the source pass over chunks ``group``: the call's own rows of those chunks, with
    the source conditioning in the conditional ones."""
    picked = torch.cat([torch.arange(j * rows, (j + 1) * rows) for j in group])
    args = {name: _rows(name, value, picked, total, len(group) == len(kinds)) for name, value in calls.items()}
    for position, j in enumerate(group):
        if kinds[j] != COND:
            continue
        for name, value in conditioning.items():
            if args.get(name) is None:
                continue
            value = value.to(args[name].device, args[name].dtype)
            if len(group) == 1:
                args[name] = value
            else:
                args[name] = args[name].clone()
                args[name][position * rows : (position + 1) * rows] = value
    return args


def _rows(name: str, value, picked: torch.Tensor, total_rows: int, all_chunks: bool):
    """The rows ``picked`` of one model-call argument (tensors with a row per call row; others only whole)."""
    if value is None or all_chunks:
        return value
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == total_rows:
        return value[picked.to(value.device)]
    raise ValueError(f"Massive-Activation Transport cannot split the model-call input {name!r} between its rows "
                     "(reference latents of edit models are not supported with an image source)")


# --- Detail Guidance ---------------------------------------------------------------------------------------------
def detail_guidance_function(perturbed, weight: float, window: tuple[float, float]):
    """The post-CFG function of Detail Guidance: ``denoised + weight * (D(c) - D_m(c))`` inside the sigma window,
    ``perturbed(args)`` giving D_m(c) (the conditional prediction with the massive channels at layer m zeroed)."""
    high, low = window

    def post_cfg(args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        if weight == 0 or not low <= float(args["sigma"].reshape(-1)[0]) <= high:
            return denoised
        return detail_guidance(denoised, args["cond_denoised"], perturbed(args), weight)

    return post_cfg


# --- run state ----------------------------------------------------------------------------------------------------
def create_run(start: Any, *, conditioning=None, reference: torch.Tensor | None = None, seed: int = 0) -> TransportRun:
    """The TransportRun of a sampling run from comfy_host's ``SamplingStart``.

    conditioning: the source CONDITIONING (None: the target's own conditional rows); reference: the reference
    latent [1 or B, C, h, w] (image source) - resized to the run's latent size when only the size differs - noised
    with noise from ``seed``; without a reference the source follows a trajectory from the run's own start.
    """
    encoded = None if conditioning is None else start.encode(conditioning)
    unsupported = sorted(name for name, value in (encoded or {}).items() if not isinstance(value, torch.Tensor))
    if unsupported:
        raise ValueError(f"source_conditioning carries {', '.join(unsupported)} (e.g. reference latents of an edit "
                         "model); transport takes plain text conditioning as its source")
    if reference is None:
        source = SourceTrajectory(start.start, start.sigmas[0], start.noise, start.cfg, start.noise_scaling)
        return TransportRun(source, encoded)
    latent = _fit_reference(reference, start.noise.shape).to(start.noise.device, start.noise.dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(start.noise.shape, generator=generator).to(start.noise.device, start.noise.dtype)
    return TransportRun(NoisedReference(latent, noise, start.noise_scaling), encoded)


def _fit_reference(reference: torch.Tensor, shape) -> torch.Tensor:
    batch, channels, height, width = shape
    if reference.shape[0] not in (1, batch) or reference.shape[1] != channels:
        raise ValueError(f"source_image: {reference.shape[0]} reference latents of {reference.shape[1]} channels "
                         f"cannot serve {batch} images of {channels}-channel latents; give 1 image or {batch}")
    if tuple(reference.shape[-2:]) == (height, width):
        return reference
    if abs(reference.shape[-2] * width / reference.shape[-1] - height) > 1.0:
        raise ValueError(
            f"source_image has another aspect ratio ({reference.shape[-1] * 8}x{reference.shape[-2] * 8} px) than the "
            f"image being generated ({width * 8}x{height * 8} px); crop or resize it to that shape"
        )
    return torch.nn.functional.interpolate(reference.float(), size=(height, width), mode="bilinear",
                                           align_corners=False)
