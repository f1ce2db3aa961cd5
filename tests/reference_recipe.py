"""An independent, by-hand implementation of the DiTF recipe for diffusers DiT models (Flux and SD3 here, the other
families in ``reference_families``).

It drives the model's own submodules block by block (no hooks, nothing from ``ditf_core``) and follows design §2
literally: x_t per draw, run blocks 0..k-1, average the raw input of block k over draws, zero the discarded
channels, LayerNorm without affine, ``(1 + scale) * LN + shift`` with the block's own modulation.
"""

from __future__ import annotations

import reference_families
import torch
import torch.nn.functional as F
from torch import nn


def reference_features(model, latents, noise, *, t, layer, text, pooled, discard=(), guidance=3.5, modulate=True):
    """latents [B, C, H, W] (or [E, B, ...]), noise [E, B, C, H, W] or None -> features [B, C, h, w].

    Flux.1 and SD3 are driven here; the other families by ``reference_families`` (same contract)."""
    family_by_hand = type(model).__name__ in reference_families.BY_HAND
    draws = [latents if noise is None else _noised(model, latents[e] if latents.ndim == 5 else latents, noise[e], t)
             for e in range(1 if noise is None else noise.shape[0])]
    states = []
    for x_t in draws:
        if family_by_hand:
            hidden, shift, scale, grid = reference_families.by_hand(model, x_t, t=t, layer=layer, text=text,
                                                                    pooled=pooled, guidance=guidance)
        else:
            hidden, temb = block_input_by_hand(model, x_t, t=t, layer=layer, text=text, pooled=pooled,
                                               guidance=guidance)
            grid = (x_t.shape[-2] // 2, x_t.shape[-1] // 2)
        states.append(hidden)
    mean = torch.stack(states).mean(0)
    mean = mean.clone()
    for channel in discard:
        mean[:, :, channel] = 0
    if modulate:
        if not family_by_hand:
            shift, scale = modulation_by_hand(model, layer, temb)
        norm = nn.LayerNorm(mean.shape[-1], elementwise_affine=False, eps=1e-6)
        mean = (1 + scale[:, None, :]) * norm(mean) + shift[:, None, :]
    b, n, c = mean.shape
    return mean.permute(0, 2, 1).reshape(b, c, *grid)


def _noised(model, clean, noise, t):
    return reference_families.noised(model, clean, noise, t)


def block_input_by_hand(model, x_t, *, t, layer, text, pooled, guidance):
    """(image hidden states entering block ``layer`` [B, N, C], conditioning vector [B, D])."""
    b = x_t.shape[0]
    text = text.expand(b, -1, -1)
    pooled = pooled.expand(b, -1)
    if type(model).__name__ == "FluxTransformer2DModel":
        return _flux_by_hand(model, x_t, t, layer, text, pooled, guidance)
    return _sd3_by_hand(model, x_t, t, layer, text, pooled)


def modulation_by_hand(model, layer, temb):
    """(shift, scale) of the attention branch of block ``layer``."""
    if type(model).__name__ == "FluxTransformer2DModel":
        doubles = len(model.transformer_blocks)
        if layer < doubles:
            chunks = model.transformer_blocks[layer].norm1.linear(F.silu(temb)).chunk(6, dim=1)
        else:
            chunks = model.single_transformer_blocks[layer - doubles].norm.linear(F.silu(temb)).chunk(3, dim=1)
    else:
        block = model.transformer_blocks[layer]
        n = 9 if block.use_dual_attention else 6
        chunks = block.norm1.linear(F.silu(temb)).chunk(n, dim=1)
    return chunks[0], chunks[1]


def _flux_by_hand(model, x_t, t, layer, text, pooled, guidance):
    b, c, h, w = x_t.shape
    # 2x2 patches, channel-major inside a patch, patches row-major.
    tokens = torch.stack(
        [x_t[:, :, i::2, j::2] for i in range(2) for j in range(2)], dim=2
    )  # [B, C, 4, h/2, w/2]
    tokens = tokens.reshape(b, c * 4, (h // 2) * (w // 2)).transpose(1, 2)
    hidden = model.x_embedder(tokens)
    timestep = torch.full((b,), t) * 1000
    if model.config.guidance_embeds:
        temb = model.time_text_embed(timestep, torch.full((b,), guidance) * 1000, pooled)
    else:
        temb = model.time_text_embed(timestep, pooled)
    encoder = model.context_embedder(text)
    grid_y, grid_x = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(grid_y), grid_y, grid_x], dim=-1).reshape(-1, 3).float()
    ids = torch.cat([torch.zeros(text.shape[1], 3), img_ids])
    rope = model.pos_embed(ids)
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    for block in blocks[:layer]:
        encoder, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder, temb=temb, image_rotary_emb=rope)
    return hidden, temb


def _sd3_by_hand(model, x_t, t, layer, text, pooled):
    b = x_t.shape[0]
    hidden = model.pos_embed(x_t)
    temb = model.time_text_embed(torch.full((b,), t * 1000), pooled)
    encoder = model.context_embedder(text)
    for block in model.transformer_blocks[:layer]:
        encoder, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder, temb=temb)
    return hidden, temb
