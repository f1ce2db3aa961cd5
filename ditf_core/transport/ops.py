"""Massive activations at work: the tensor operations (host-free, tensors in / out).

Notation (design.md §7, "Few Channels Draw The Whole Picture", arXiv 2605.13974; Detail Guidance, arXiv 2510.11538):
``hidden`` is the image-token hidden state entering a block, ``[B, N, C]`` (B rows, N image tokens, C channels).

* massive-activation (MA) channels of a row: the top-k channels by ``|mean over image tokens|`` (mean first, then
  abs); the control set: the k channels with the LOWEST statistic;
* disruption: those channels set to 0;
* transport: ``X_tgt + strength * M * (X_src - X_tgt)`` with the joint mask ``M = p m^T`` (p: spatial mask over
  tokens, m: channel mask). strength 1 is the paper's hard ``X_tgt (1 - M) + X_src M``. Written as an increment so
  that the target stays bit-identical wherever ``M (X_src - X_tgt)`` is zero;
* Detail Guidance: ``D_hat = D + w (D(c) - D_m(c))``, ``D_m`` the prediction with the MA channels at layer m zeroed.

Statistics are computed in float32 whatever the model's dtype; results keep the input dtype.
"""

from __future__ import annotations

import math

import torch


def channel_statistic(hidden: torch.Tensor) -> torch.Tensor:
    """``|mean over image tokens|`` per channel: hidden [B, N, C] -> [B, C] float32."""
    _check_hidden(hidden)
    return hidden.to(torch.float32).mean(dim=1).abs()


def massive_channels(hidden: torch.Tensor, top_k: int) -> torch.Tensor:
    """The top-k MA channels of each row: hidden [B, N, C] -> channel indices [B, k] (largest statistic first)."""
    statistic = channel_statistic(hidden)
    k = check_top_k(top_k, statistic.shape[-1])
    return torch.topk(statistic, k, dim=-1, largest=True, sorted=True).indices


def control_channels(hidden: torch.Tensor, top_k: int) -> torch.Tensor:
    """The control set: the k channels with the lowest statistic, hidden [B, N, C] -> [B, k] (lowest first)."""
    statistic = channel_statistic(hidden)
    k = check_top_k(top_k, statistic.shape[-1])
    return torch.topk(statistic, k, dim=-1, largest=False, sorted=True).indices


def disrupt(hidden: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """hidden [B, N, C] with ``channels`` ([B, k] per row, or [k] for all rows) set to 0; a new tensor."""
    _check_hidden(hidden)
    index = _channel_index(channels, hidden)
    return hidden.scatter(2, index, torch.zeros((), dtype=hidden.dtype, device=hidden.device).expand(index.shape))


def channel_mask(channels: torch.Tensor, width: int) -> torch.Tensor:
    """The channel mask m: channels [B, k] -> [B, C] float32 with 1 at the chosen channels."""
    mask = torch.zeros(channels.shape[0], width, device=channels.device)
    return mask.scatter(1, channels.long(), 1.0)


def joint_mask(spatial: torch.Tensor, channels: torch.Tensor, width: int) -> torch.Tensor:
    """``M = p m^T``: spatial mask p [B, N] (values in [0, 1]) and channels [B, k] -> M [B, N, C] float32."""
    if spatial.ndim != 2 or spatial.shape[0] != channels.shape[0]:
        raise ValueError(f"spatial mask must be [B, N] with B = {channels.shape[0]}, got {list(spatial.shape)}")
    return spatial.to(torch.float32)[:, :, None] * channel_mask(channels, width)[:, None, :]


def transport(target: torch.Tensor, source: torch.Tensor, channels: torch.Tensor, spatial: torch.Tensor | None = None,
              strength: float = 1.0) -> torch.Tensor:
    """``X_tgt + strength * M * (X_src - X_tgt)`` with ``M = p m^T``, touching only the chosen channels.

    target, source: [B, N, C] (same shape); channels: [B, k] (or [k]); spatial: p [B, N] in [0, 1], None for all
    tokens; strength in [0, 1]. Returns a new tensor in the target's dtype; channels outside m are the target's own
    bits, and so is every entry where the source equals the target.
    """
    _check_hidden(target)
    if source.shape != target.shape:
        raise ValueError(f"source {list(source.shape)} and target {list(target.shape)} hidden states differ in shape")
    strength = check_strength(strength)
    index = _channel_index(channels, target)
    chosen, wanted = target.gather(2, index), source.gather(2, index)
    weight = torch.full((1, 1, 1), strength, device=target.device)
    if spatial is not None:
        if spatial.shape != target.shape[:2]:
            raise ValueError(f"spatial mask must be [B, N] = {list(target.shape[:2])}, got {list(spatial.shape)}")
        weight = weight * spatial.to(target.device, torch.float32)[:, :, None]
    moved = (chosen.to(torch.float32) + (wanted.to(torch.float32) - chosen.to(torch.float32)) * weight).to(target.dtype)
    # The ends are exact: weight 0 keeps the target's bits, weight 1 takes the source's (the paper's hard mask).
    moved = torch.where(weight == 0, chosen, torch.where(weight == 1, wanted, moved))
    return target.scatter(2, index, moved)


def detail_guidance(guided: torch.Tensor, conditional: torch.Tensor, perturbed: torch.Tensor,
                    weight: float) -> torch.Tensor:
    """``guided + weight * (conditional - perturbed)``: any matching shapes (e.g. denoised [B, C, H, W]).

    With CFG, ``guided`` is the CFG result ``D(0) + s (D(c) - D(0))`` (the paper's ``D(c) + lambda (D(c) - D(0))``
    with lambda = s - 1) and the Detail Guidance term is added on top.
    """
    if weight == 0:
        return guided
    return guided + (conditional - perturbed) * weight


def check_top_k(top_k, width: int) -> int:
    """top_k as an int in 1..width, or an error naming the input."""
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an integer, got {top_k!r}")
    if not 1 <= top_k <= width:
        raise ValueError(f"top_k must be in 1..{width} (this model's hidden width), got {top_k}")
    return top_k


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TypeError(f"strength must be a number in [0, 1], got {strength!r}")
    strength = float(strength)
    if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a finite number in [0, 1], got {strength!r}")
    return strength


def _check_hidden(hidden: torch.Tensor) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        shape = list(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a tensor [B, N, C] (rows, image tokens, channels), got {shape}")


def _channel_index(channels, hidden: torch.Tensor) -> torch.Tensor:
    """channels [B, k] or [k] -> a gather/scatter index [B, N, k] on hidden's device.

    Lists and tuples (a user's channel numbers) are range-checked here; tensors are taken as computed (top-k
    indices): checking them would make the GPU report back to the host at every block.
    """
    batch, tokens, width = hidden.shape
    if not isinstance(channels, torch.Tensor):
        bad = [c for c in channels if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < width]
        if bad:
            raise ValueError(f"channels must be integers in 0..{width - 1}, got {bad[:8]}")
    channels = torch.as_tensor(channels, dtype=torch.long, device=hidden.device)
    if channels.ndim == 1:
        channels = channels.expand(batch, -1)
    if channels.ndim != 2 or channels.shape[0] != batch:
        raise ValueError(f"channels must be [B, k] with B = {batch} (or [k]), got {list(channels.shape)}")
    return channels[:, None, :].expand(batch, tokens, channels.shape[1])
