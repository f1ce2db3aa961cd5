"""Flux.2 (dev, klein) as diffusers' ``Flux2Transformer2DModel``.

Blocks: double-stream blocks (global 0..D-1; Flux.2-dev has 8) then single-stream blocks (48 in Flux.2-dev).
Token order: double blocks see image tokens only; single blocks see ``cat(text, image)`` - image tokens last.

Modulation is SHARED (global): the model computes one ``double_stream_modulation_img(temb)`` for every double block
and one ``single_stream_modulation(temb)`` for every single block, and hands it to each block (``temb_mod_img`` /
``temb_mod``). Its first three chunks are the attention branch's (shift, scale, gate); blocks have no AdaLN layer
of their own.

Latents: the Flux.2 VAE (``AutoencoderKLFlux2``) makes 32 channels at 1/8; the pipeline patchifies them 2x2 into
128 channels at 1/16 and normalises them with the VAE's batch-norm statistics (``ditf_core.latents``). The model
then takes one token per 1/16 cell (patch 1), row-major, with 4-axis RoPE ids (t, h, w, l).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiTFamily, Modulation, call_argument, split_modulation


class Flux2Family(DiTFamily):
    name = "flux2"
    label = "Flux.2 transformer"
    patch = 1  # one token per normalised latent cell (the 2x2 patchify happens with the VAE latents)
    vae_factor = 16
    latent_space = "flux2"
    zero_text_tokens = 512  # Mistral-3 tokens of Flux.2-dev prompts
    single_blocks = "single_transformer_blocks"
    single_text_first = True  # single blocks see cat(text, image)

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import Flux2Transformer2DModel

        return isinstance(transformer, Flux2Transformer2DModel)

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0] if hasattr(block, "norm1") else block.attn.to_out

    def signature_parameters(self, block: nn.Module) -> list[torch.Tensor]:
        return [self.attention_out(block).weight]

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return None

    def block_inputs(self, args: tuple, kwargs: dict):
        hidden = call_argument(args, kwargs, "hidden_states", 0)
        name = "temb_mod_img" if "temb_mod_img" in kwargs else "temb_mod"  # double / single blocks
        return hidden, call_argument(args, kwargs, name, 2)

    def modulation(self, block: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
        # temb is the shared modulation itself ([B, 6C] double, [B, 3C] single): nothing to recompute.
        return split_modulation(temb.reshape(temb.shape[0], -1), hidden_size)

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        dtype, device = transformer.dtype, x_t.device
        tokens = x_t.flatten(2).transpose(1, 2)  # [B, h*w, 128], row-major
        img_ids = position_ids(h, w, device)
        txt_ids = torch.zeros(text_embeds.shape[1], 4, device=device, dtype=torch.long)
        txt_ids[:, 3] = torch.arange(text_embeds.shape[1], device=device)
        use_guidance = bool(transformer.config.guidance_embeds)
        return transformer(
            hidden_states=tokens,
            encoder_hidden_states=text_embeds,
            timestep=torch.full((b,), t, device=device, dtype=dtype),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=torch.full((b,), guidance, device=device, dtype=dtype) if use_guidance else None,
            return_dict=False,
        )


def position_ids(height: int, width: int, device) -> torch.Tensor:
    """[height*width, 4] RoPE ids (t, h, w, l) = (0, row, column, 0) of the image tokens, as the Flux.2 pipeline."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=1)
