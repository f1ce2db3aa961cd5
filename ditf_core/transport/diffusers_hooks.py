"""Massive activations at work in diffusers: disruption, transport and Detail Guidance inside a normal pipeline call.

    from ditf_core.transport import Disruption
    from ditf_core.transport.diffusers_hooks import DisruptionPatch, massive_activations

    with massive_activations(pipe.transformer, disruption=DisruptionPatch(blocks=range(5, 20), spec=Disruption(12))):
        image = pipe(prompt).images[0]

The context manager registers forward hooks on the transformer and its blocks and removes them in ``finally`` (after
success, errors and KeyboardInterrupt alike). The per-block arithmetic is shared with the ComfyUI nodes
(:mod:`ditf_core.transport.patches`); the hooks read each block's image tokens by name and position, as capture does.

Pipeline conventions this relies on (diffusers 0.42): the transformer is called with keywords (``hidden_states``,
``encoder_hidden_states``, ``pooled_projections``, ``timestep``, ...) and predicts the flow velocity
``v = noise - x0``; with true CFG the batch is ``[unconditional; conditional]`` halves (pass ``guidance_scale``).
Timesteps are ``sigma * timestep_scale``: Flux pipelines pass sigma (scale 1), SD3 pipelines 1000 sigma.

* Disruption: the chosen blocks' image tokens lose their top-k MA channels (every row, every pass).
* Transport: before each transformer call a source pass runs (the source latent: a trajectory from the call's own
  first latent moved by Euler steps with the source's prediction, or a reference latent noised to the step);
  its image tokens at the chosen blocks are kept and moved into the conditional rows of the call.
* Detail Guidance: after each call, one more pass of the conditional rows with the MA channels at layer m zeroed;
  the conditional rows' output becomes ``v + w' (v - v_m)`` with ``w' = w / guidance_scale`` under CFG, so the
  pipeline's CFG result gains exactly ``w (D(c) - D_m(c))`` as in the ComfyUI node.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..families import family_for
from .patches import Disruption, MassiveZeroing, Transport
from .source import COND, UNCOND, NoisedReference, SourceTrajectory, flow_noise_scaling

TIMESTEP_SCALES = {"flux": 1.0, "sd3": 1000.0}  # timestep = sigma * scale, as the diffusers pipelines call them


@dataclass(frozen=True)
class DisruptionPatch:
    """Zero MA channels entering ``blocks`` (global indices) while sigma lies in ``sigmas`` = (high, low)."""

    blocks: Sequence[int]
    spec: Disruption = Disruption()
    sigmas: tuple[float, float] = (1.0, 0.0)


@dataclass(frozen=True)
class TransportPatch:
    """Transport from a source into ``blocks`` while sigma lies in ``sigmas`` = (high, low).

    source_embeds / source_pooled: the source prompt's ``encoder_hidden_states`` [1 or B, L, D] and
    ``pooled_projections`` [1 or B, P] (None: the call's own conditional rows); reference: an image source, latents in
    the transformer's input format [1 or B, ...] (Flux: packed tokens), noised with noise from ``seed``.
    """

    blocks: Sequence[int]
    spec: Transport = Transport()
    source_embeds: torch.Tensor | None = None
    source_pooled: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    seed: int = 0
    sigmas: tuple[float, float] = (1.0, 0.0)


@dataclass(frozen=True)
class DetailGuidancePatch:
    """Detail Guidance with weight ``weight`` at layer ``layer`` while sigma lies in ``sigmas`` = (high, low)."""

    layer: int
    weight: float = 1.0
    zeroing: MassiveZeroing = MassiveZeroing()
    sigmas: tuple[float, float] = (1.0, 0.0)


@dataclass
class _State:
    """What the hooks of one context share: which kind of pass is running and the transport's kept tokens."""

    inside: bool = False  # inside one of our own extra transformer calls (no transformer-level hooks then)
    sigma: float = 1.0
    capture_rows: slice | None = None  # source pass: keep these rows
    transport_rows: slice | None = None  # target pass: move these rows
    perturb: bool = False  # Detail Guidance's perturbed pass
    stash: dict[int, torch.Tensor] = field(default_factory=dict)
    source: SourceTrajectory | NoisedReference | None = None


@contextmanager
def massive_activations(transformer: nn.Module, *, disruption: DisruptionPatch | None = None,
                        transport: TransportPatch | None = None, detail_guidance: DetailGuidancePatch | None = None,
                        guidance_scale: float | None = None, timestep_scale: float | None = None) -> Iterator[None]:
    """Apply the given patches to every call of ``transformer`` inside the ``with`` block.

    guidance_scale: the pipeline's CFG scale when it batches [uncond; cond] (SD3 pipelines with CFG > 1); None: every
    row is conditional (Flux pipelines). timestep_scale: None takes the family's (Flux 1, SD3 1000).
    """
    family = family_for(transformer)
    scale = timestep_scale if timestep_scale is not None else TIMESTEP_SCALES.get(family.name)
    if scale is None:
        raise ValueError(f"pass timestep_scale (timestep = sigma * scale) for this {family.label}")
    blocks = family.blocks(transformer)
    for patch_blocks in ([] if disruption is None else disruption.blocks, [] if transport is None else transport.blocks,
                         [] if detail_guidance is None else [detail_guidance.layer]):
        for block in patch_blocks:
            if not 0 <= block < len(blocks):
                raise ValueError(f"block {block} is out of range for this {family.label}: use 0..{len(blocks) - 1}")
    state = _State()
    handles = []

    def token_hook(layer: int, change):
        def hook(module, args, kwargs):
            hidden = family.block_inputs(args, kwargs)[0]
            changed = change(layer, hidden)
            return None if changed is None else _replace_hidden(family, args, kwargs, changed)

        return hook

    def disrupt(layer, hidden):
        high, low = disruption.sigmas
        return disruption.spec.apply(hidden) if low <= state.sigma <= high else None

    def move(layer, hidden):
        if state.capture_rows is not None:
            state.stash[layer] = hidden[state.capture_rows].detach().clone()
            return None
        if state.transport_rows is None or layer not in state.stash:
            return None
        out = hidden.clone()
        out[state.transport_rows] = transport.spec.apply(hidden[state.transport_rows], state.stash[layer])
        return out

    def zero(layer, hidden):
        return detail_guidance.zeroing.apply(hidden) if state.perturb else None

    def before(module, args, kwargs):
        if state.inside:
            return None
        state.sigma = float(_keyword(kwargs, "timestep").reshape(-1)[0]) / scale
        state.stash, state.transport_rows = {}, None
        if transport is not None:
            _run_source(transformer, transport, state, kwargs, guidance_scale, scale)
        return None

    def after(module, args, kwargs, output):
        if state.inside or detail_guidance is None or detail_guidance.weight == 0:
            return None
        high, low = detail_guidance.sigmas
        if not low <= state.sigma <= high:
            return None
        rows = _conditional_rows(kwargs, guidance_scale)
        weight = detail_guidance.weight / (guidance_scale or 1.0)
        moved = state.transport_rows
        state.inside, state.perturb = True, True
        if moved is not None:  # the perturbed pass holds only the conditional rows: all of them are transported
            state.transport_rows = slice(0, rows.stop - rows.start)
        try:
            perturbed = _sample(transformer(**_pick_rows(kwargs, rows)))
        finally:
            state.inside, state.perturb, state.transport_rows = False, False, moved
        sample = _sample(output).clone()
        sample[rows] = sample[rows] + (sample[rows] - perturbed) * weight
        return (sample, *output[1:]) if isinstance(output, tuple) else type(output)(sample=sample)

    try:
        if disruption is not None:
            handles += [blocks[b].register_forward_pre_hook(token_hook(b, disrupt), with_kwargs=True)
                        for b in disruption.blocks]
        if transport is not None:
            handles += [blocks[b].register_forward_pre_hook(token_hook(b, move), with_kwargs=True)
                        for b in transport.blocks]
        if detail_guidance is not None:
            handles.append(blocks[detail_guidance.layer].register_forward_pre_hook(
                token_hook(detail_guidance.layer, zero), with_kwargs=True))
        handles.append(transformer.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(transformer.register_forward_hook(after, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run_source(transformer, patch: TransportPatch, state: _State, kwargs: dict, guidance_scale, scale) -> None:
    """The source pass of one call: advance the source, run it with the call's row layout, keep its tokens."""
    hidden = _keyword(kwargs, "hidden_states")
    rows = _conditional_rows(kwargs, guidance_scale)
    high, low = patch.sigmas
    sigma = torch.tensor(state.sigma, dtype=torch.float32)
    if state.source is None or state.sigma > float(state.source.sigma if hasattr(state.source, "sigma") else 1.0):
        state.source = _new_source(patch, hidden[rows], sigma, guidance_scale)  # a new pipeline run starts
    active = low <= state.sigma <= high
    if not active and not (state.source.needs_predictions and state.sigma > low):
        return
    latent = state.source.latent_at(sigma).to(hidden.dtype)
    source_kwargs = dict(kwargs)
    source_kwargs["hidden_states"] = latent.repeat(hidden.shape[0] // latent.shape[0], *([1] * (latent.ndim - 1)))
    for name, value in (("encoder_hidden_states", patch.source_embeds), ("pooled_projections", patch.source_pooled)):
        if value is None:
            continue
        call = _keyword(kwargs, name)
        value = value.to(call.device, call.dtype)
        if guidance_scale is None:
            source_kwargs[name] = value.expand(call.shape[0], *value.shape[1:])
        elif value.shape[1:] != call.shape[1:]:
            raise ValueError(f"the source's {name} {list(value.shape)} must match the pipeline's {list(call.shape)} "
                             "beyond the batch (encode both prompts with the same padding) under CFG")
        else:
            replaced = call.clone()
            replaced[rows] = value.expand_as(replaced[rows])
            source_kwargs[name] = replaced
    state.inside, state.capture_rows = True, (rows if active else None)
    try:
        velocity = _sample(transformer(**source_kwargs)).float()
    finally:
        state.inside, state.capture_rows = False, None
    denoised = source_kwargs["hidden_states"].float() - state.sigma * velocity
    state.source.record(sigma, COND, denoised[rows])
    if guidance_scale is not None:
        state.source.record(sigma, UNCOND, denoised[: hidden.shape[0] // 2])
    state.transport_rows = rows if active else None


def _new_source(patch: TransportPatch, start: torch.Tensor, sigma: torch.Tensor, guidance_scale):
    if patch.reference is None:
        # The first latent of a run that starts at sigma 1 is its noise; later starts re-noise with it too.
        return SourceTrajectory(start.float().clone(), sigma, start.float().clone(), guidance_scale or 1.0,
                                flow_noise_scaling)
    generator = torch.Generator("cpu").manual_seed(patch.seed)
    noise = torch.randn(start.shape, generator=generator).to(start.device)
    return NoisedReference(patch.reference.to(start.device, torch.float32), noise, flow_noise_scaling)


def _conditional_rows(kwargs: dict, guidance_scale) -> slice:
    """The conditional rows of a call: all, or the second half of a CFG batch [uncond; cond]."""
    batch = _keyword(kwargs, "hidden_states").shape[0]
    return slice(0, batch) if guidance_scale is None else slice(batch // 2, batch)


def _pick_rows(kwargs: dict, rows: slice) -> dict:
    batch = _keyword(kwargs, "hidden_states").shape[0]
    return {name: value[rows] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch else value
            for name, value in kwargs.items()}


def _keyword(kwargs: dict, name: str) -> torch.Tensor:
    if name not in kwargs:
        raise RuntimeError(f"the transformer was called without the keyword {name!r}; massive_activations needs "
                           "pipelines that call it by keyword (diffusers' own do)")
    return kwargs[name]


def _sample(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


def _replace_hidden(family, args: tuple, kwargs: dict, hidden: torch.Tensor):
    name, position = family.hidden_arg
    if name in kwargs:
        return args, {**kwargs, name: hidden}
    return (*args[:position], hidden, *args[position + 1 :]), kwargs
