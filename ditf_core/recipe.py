"""The DiTF recipe on latents (design §2, steps 3-8).

``extract_from_latents`` is the public entry point. It is built from two halves that other hosts reuse:

* :func:`capture_ensemble` noises the latents E times, runs the model up to block k in micro-batches and
  returns the raw block input averaged over the ensemble plus the block's own modulation;
* :func:`apply_recipe` zeroes the discarded channels, applies LayerNorm (no affine, eps 1e-6) and the AdaLN
  modulation ``(1 + scale) * LN(h) + shift``, in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .capture import Consumer, Interrupt, capture_blocks, check_layers
from .errors import DiTFInputError
from .families import DiTFamily, Modulation, family_for
from .families.base import TextEmbeds, flow_matching_noise

LAYER_NORM_EPS = 1e-6
# Activations one row (one image of one noise draw) of a forward pass needs, in bytes per image token and hidden
# channel: a Flux single-stream block holds its input, the 7C-wide fused qkv + MLP projection, q/k/v, the attention
# output and the 4C MLP activation at once (~24 values per token and channel, 4 bytes in float32). ComfyUI's own
# Flux estimate (memory_usage_factor 3.1) comes to ~85 bytes per token and channel in bf16.
PASS_BYTES_PER_TOKEN_CHANNEL = 96

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class EnsembleCapture:
    """Raw input of one block averaged over the ensemble, with that block's modulation.

    hidden: [B, N, C] float32; modulation: [B, C] each; grid: (h, w) token grid, h * w == N.
    """

    hidden: torch.Tensor
    modulation: Modulation
    grid: tuple[int, int]


@torch.no_grad()
def extract_from_latents(
    transformer: nn.Module,
    latents: torch.Tensor,
    *,
    t: float,
    layer: int,
    text_embeds: TextEmbeds,
    pooled: torch.Tensor | None,
    noise: torch.Tensor | None = None,
    discard: Sequence[int] = (),
    guidance: float = 3.5,
    modulate: bool = True,
    micro_batch: int | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """DiTF features [B, C, h, w] (float32) of clean, normalised latents.

    latents: [B, C_lat, H, W], or [E, B, C_lat, H, W] for one clean sample per ensemble member.
    text_embeds: [1 or B, L, D], or for families with several text streams (HiDream) a dict of batch-first tensors.
    pooled: [1 or B, P]; None for families that take no pooled vector.
    noise: None (``latents`` are used as x_t as they are) or [E, B, C_lat, H, W] for an ensemble of E draws,
        ``x_t = t * noise + (1 - t) * latents`` (flow matching; epsilon-prediction families noise as DDPM does).
    layer: global block index (Flux: double blocks first, then single blocks).
    discard: channels zeroed on the ensemble-averaged raw state before LayerNorm.
    modulate: False returns the raw averaged block input (after discard) instead of the modulated feature.
    micro_batch: at most this many (ensemble x batch) rows per forward pass; None runs them all at once.
    progress: called as ``progress(done, total)`` after each forward pass.
    """
    family = family_for(transformer)
    captured = capture_ensemble(
        transformer,
        latents,
        t=t,
        layers=[layer],
        text_embeds=text_embeds,
        pooled=pooled,
        noise=noise,
        guidance=guidance,
        micro_batch=micro_batch,
        progress=progress,
        family=family,
    )[layer]
    tokens = apply_recipe(captured.hidden, captured.modulation, discard=discard, modulate=modulate)
    return family.tokens_to_map(tokens, captured.grid)


def apply_recipe(
    hidden: torch.Tensor,
    modulation: Modulation,
    *,
    discard: Sequence[int] = (),
    modulate: bool = True,
) -> torch.Tensor:
    """Recipe steps 6-7 on raw averaged tokens [B, N, C]: discard, LayerNorm, AdaLN modulation (float32)."""
    hidden = hidden.to(torch.float32)
    channels = check_channels(discard, hidden.shape[-1])
    if channels:
        hidden = hidden.clone()
        hidden[..., channels] = 0.0
    if not modulate:
        return hidden
    normed = F.layer_norm(hidden, hidden.shape[-1:], eps=LAYER_NORM_EPS)
    scale = modulation.scale.to(hidden.device, torch.float32)[:, None]
    shift = modulation.shift.to(hidden.device, torch.float32)[:, None]
    return normed * (1.0 + scale) + shift


@torch.no_grad()
def capture_ensemble(
    transformer: nn.Module,
    latents: torch.Tensor,
    *,
    t: float,
    layers: Sequence[int],
    text_embeds: TextEmbeds,
    pooled: torch.Tensor | None,
    noise: torch.Tensor | None = None,
    guidance: float = 3.5,
    micro_batch: int | None = None,
    progress: ProgressFn | None = None,
    family: DiTFamily | None = None,
    interrupt: Interrupt | None = None,
) -> dict[int, EnsembleCapture]:
    """Ensemble-averaged raw inputs of ``layers`` (one early-exit pass per micro-batch covers all of them).

    interrupt: called before every block up to the deepest of ``layers`` (see :func:`~.capture.capture_blocks`);
    it may raise to stop within one block. progress(done, total) is called after each pass.
    """
    family = family or family_for(transformer)
    layers = check_layers(transformer, family, layers)
    t = check_timestep(t)
    clean, noise = _check_latents(transformer, family, latents, noise)
    text_embeds, pooled = _broadcast_conditioning(family, transformer, text_embeds, pooled, clean.shape[1])
    device, dtype = _device_dtype(transformer)

    grid = (clean.shape[-2] // family.patch, clean.shape[-1] // family.patch)

    def run(x_t: torch.Tensor, images: torch.Tensor, consume: Consumer) -> None:
        x_t = x_t.to(device=device, dtype=dtype)
        cond = rows_of(text_embeds, images, device, dtype)
        vec = pooled[images].to(device=device, dtype=dtype)
        capture_blocks(transformer, family, layers, lambda: family.forward(transformer, x_t, t, cond, vec, guidance),
                       consume, interrupt, tokens=grid[0] * grid[1])

    averaged = average_over_ensemble(clean, noise, t=t, run=run, micro_batch=micro_batch, progress=progress,
                                      add_noise=family.add_noise)
    blocks = family.blocks(transformer)
    size = family.hidden_size(transformer)
    return {
        layer: EnsembleCapture(hidden, family.modulation(blocks[layer], temb, size), grid)
        for layer, (hidden, temb) in averaged.items()
    }


def average_over_ensemble(
    clean: torch.Tensor,
    noise: torch.Tensor | None,
    *,
    t: float,
    run: Callable[[torch.Tensor, torch.Tensor, Consumer], None],
    micro_batch: int | None = None,
    progress: ProgressFn | None = None,
    add_noise: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The host-agnostic ensemble loop: noise, run in micro-batches, average the captured block inputs.

    clean: [E or 1, B, C, H, W] clean latents; noise: [E, B, C, H, W] or None (``clean`` is x_t as given).
    run(x_t [m, C, H, W], images [m], consume) runs the host model on m (draw, image) rows and calls
    ``consume(layer, hidden [m, N, C], vector [m, D])`` as each requested block input appears. Inputs are summed
    on arrival, so memory holds one running sum per layer, never a copy per row. ``vector`` is kept per image as
    given (the diffusers host passes the block's conditioning vector; the ComfyUI host its computed modulation).
    add_noise(clean, noise, t) -> x_t: the family's noising (default flow matching, ``t * noise + (1 - t) * clean``).
    Returns per layer (mean hidden [B, N, C] float32, vector [B, D]).
    """
    ensemble, batch = (noise.shape[0] if noise is not None else clean.shape[0]), clean.shape[1]
    rows = [(e, b) for e in range(ensemble) for b in range(batch)]
    step = _check_micro_batch(micro_batch, len(rows))
    passes = math.ceil(len(rows) / step)
    sums: dict[int, torch.Tensor] = {}
    vectors: dict[int, torch.Tensor] = {}
    for done, start in enumerate(range(0, len(rows), step), start=1):
        chunk = rows[start : start + step]
        members = torch.tensor([e for e, _ in chunk])
        images = torch.tensor([b for _, b in chunk])
        x_t = clean[members if clean.shape[0] > 1 else torch.zeros_like(members), images]
        if noise is not None:
            x_t = (add_noise or flow_matching_noise)(x_t, noise[members, images], t)

        def consume(layer: int, hidden: torch.Tensor, vector: torch.Tensor) -> None:
            if layer not in sums:
                sums[layer] = torch.zeros((batch, *hidden.shape[1:]), device=hidden.device, dtype=torch.float32)
                vectors[layer] = vector.new_zeros((batch, *vector.shape[1:]))
            index = images.to(hidden.device)
            sums[layer].index_add_(0, index, hidden.to(torch.float32))
            vectors[layer][index] = vector

        run(x_t, images, consume)
        if progress is not None:
            progress(done, passes)
    return {layer: (total / ensemble, vectors[layer]) for layer, total in sums.items()}


def plan_passes(
    *, images: int, tokens: int, hidden_size: int, blocks_kept: int, available_bytes: int | None,
    device: torch.device | str = "cpu",
) -> int:
    """Images per forward pass (each pass runs one noise draw of up to that many images) that fit in memory.

    The capture keeps one float32 running sum [images, tokens, hidden_size] per captured block for the whole run
    (``images x tokens x hidden_size x blocks_kept x 4`` bytes: the Inspector's sweep keeps every block) and each
    image in a pass needs about ``tokens x hidden_size x PASS_BYTES_PER_TOKEN_CHANNEL`` bytes of activations.
    available_bytes: free memory on ``device``, where the capture runs (device memory on a GPU, available RAM on
    the CPU; the caller measures it); None: no check, all images in one pass. Raises
    :class:`~.errors.DiTFInputError` naming the memory it would take and what to lower when not even one image
    per pass fits next to the sums.
    """
    kept = kept_bytes(images, tokens, hidden_size, blocks_kept)
    per_image = tokens * hidden_size * PASS_BYTES_PER_TOKEN_CHANNEL
    if available_bytes is None:
        return images
    if kept + per_image > available_bytes:
        device = torch.device(device)
        where = "RAM" if device.type == "cpu" else f"{device} memory"
        lower = "fewer images or a lower resolution"
        if blocks_kept > 1:
            lower += ", or keep fewer blocks (fewer layers; sweep off keeps only the layers)"
        raise DiTFInputError(
            f"this capture needs about {_size(kept + per_image)} ({images} image(s) x {tokens:,} tokens x "
            f"{hidden_size} channels x {blocks_kept} block(s) kept x 4 bytes = {_size(kept)}, plus "
            f"{_size(per_image)} for one image's forward pass) but only {_size(available_bytes)} is free "
            f"in {where}; use {lower}"
        )
    return max(1, min(images, (available_bytes - kept) // per_image))


def kept_bytes(images: int, tokens: int, hidden_size: int, blocks_kept: int) -> int:
    """Memory of the capture's running sums: float32 [images, tokens, hidden_size] per captured block."""
    return images * tokens * hidden_size * blocks_kept * 4


def check_timestep(t: object) -> float:
    """``t`` as a float in the open interval (0, 1), or a ``ValueError`` saying so."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(float(t)) or not 0.0 < t < 1.0:
        raise ValueError(f"t must be a number strictly between 0 and 1 (flow-matching time; Flux default 0.26), got {t!r}")
    return float(t)


def check_channels(channels: Sequence[int], width: int) -> list[int]:
    """Channel indices as a list, each in 0..width-1, or an error naming the bad one."""
    checked = []
    for channel in channels:
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise TypeError(f"discard channels must be integers, got {channel!r}")
        if not 0 <= channel < width:
            raise ValueError(f"discard channel {channel} is out of range: this model has channels 0..{width - 1}")
        checked.append(channel)
    return checked


def _check_latents(transformer, family, latents, noise):
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if latents.ndim == 4:
        latents = latents.unsqueeze(0)
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B, C, H, W] or [E, B, C, H, W], got {list(latents.shape)}")
    channels = family.latent_channels(transformer)
    if latents.shape[2] != channels:
        raise ValueError(f"this {family.label} denoises {channels}-channel latents, got {latents.shape[2]} channels")
    family.check_latent_size(transformer, *latents.shape[-2:])
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or noise.ndim != 5 or noise.shape[1:] != latents.shape[1:]:
            shape = list(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be [E, {', '.join(map(str, latents.shape[1:]))}], got {shape}")
        if latents.shape[0] not in (1, noise.shape[0]):
            raise ValueError(f"latents carry {latents.shape[0]} ensemble samples but noise has {noise.shape[0]} draws")
    return latents, noise


def text_token_count(text_embeds: TextEmbeds) -> int:
    """Text tokens one row carries: L of a [B, L, D] tensor, or the sum over the streams of a dict (each
    batch-first with its tokens on the second-to-last axis; HiDream's Llama stream is [B, layers, L', D])."""
    streams = text_embeds.values() if isinstance(text_embeds, dict) else [text_embeds]
    return sum(int(value.shape[-2]) for value in streams)


def rows_of(text_embeds: TextEmbeds, rows: torch.Tensor, device=None, dtype=None) -> TextEmbeds:
    """Rows ``rows`` of batch-first text embeddings (a tensor, or a dict of them), moved to device / dtype."""
    if isinstance(text_embeds, dict):
        return {name: value[rows].to(device=device, dtype=dtype) for name, value in text_embeds.items()}
    return text_embeds[rows].to(device=device, dtype=dtype)


def _broadcast_conditioning(family, transformer, text_embeds, pooled, batch):
    if pooled is None and family.pooled_width(transformer) is None:
        pooled = torch.zeros(1, 1)  # families without a pooled vector ignore it
    streams = text_embeds.items() if isinstance(text_embeds, dict) else [("text_embeds", text_embeds)]
    for name, value in (*streams, ("pooled", pooled)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    family.check_conditioning(transformer, text_embeds, pooled)
    for name, value in (*streams, ("pooled", pooled)):
        if value.shape[0] not in (1, batch):
            raise ValueError(f"{name} has batch {value.shape[0]}; give 1 (shared) or {batch} (one per image)")
    expanded = {name: value.expand(batch, *value.shape[1:]) for name, value in streams}
    text = expanded if isinstance(text_embeds, dict) else expanded["text_embeds"]
    return text, pooled.expand(batch, *pooled.shape[1:])


def _check_micro_batch(micro_batch, rows):
    if micro_batch is None:
        return rows
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive integer (rows per forward pass), got {micro_batch!r}")
    return min(micro_batch, rows)


def _size(count: int) -> str:
    """Bytes for people: 103.08 GB, 12.6 MB, 3.1 kB."""
    for unit, scale, decimals in (("GB", 1e9, 2), ("MB", 1e6, 1)):
        if count >= scale:
            return f"{count / scale:.{decimals}f} {unit}"
    return f"{count / 1e3:.1f} kB"


def _device_dtype(transformer: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(transformer.parameters())
    return parameter.device, parameter.dtype
