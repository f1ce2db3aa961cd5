"""Wan 2.1 / 2.2 (text-to-video, 16-channel VAE) as diffusers' ``WanTransformer3DModel``, used on single images.

A single image is a clip of ONE frame: the Wan VAE encodes it to one latent frame (``ditf_core.latents``), and the
model patchifies (1, 2, 2) into h/2 x w/2 tokens - one frame, so the token order is row-major over the image.
Blocks (30 or 40) see image tokens only (text enters through cross-attention) and are called positionally.

Modulation: one shared ``timestep_proj`` [B, 6, C] per step plus each block's learned ``scale_shift_table``
[1, 6, C]; rows 0, 1, 2 of the sum are the self-attention branch's (shift, scale, gate). No pooled text vector.
Image-to-video models (extra image channels) and Wan 2.2 TI2V-5B (48-channel VAE at 1/16) are not supported.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import TableModulatedFamily


class WanFamily(TableModulatedFamily):
    name = "wan"
    label = "Wan transformer"
    latent_space = "wan"
    zero_text_tokens = 512  # umT5 tokens (the pipeline's max_sequence_length)
    double_blocks = "blocks"

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import WanTransformer3DModel

        return isinstance(transformer, WanTransformer3DModel) and transformer.config.in_channels == 16

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "cross"

    def hidden_size(self, transformer: nn.Module) -> int:
        config = transformer.config
        return int(config.num_attention_heads * config.attention_head_dim)

    def text_width(self, transformer: nn.Module) -> int:
        return int(transformer.config.text_dim)

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        return transformer(
            hidden_states=x_t.unsqueeze(2),  # [B, C, 1 frame, H, W]
            timestep=torch.full((b,), t * 1000.0, device=x_t.device, dtype=transformer.dtype),
            encoder_hidden_states=text_embeds,
            return_dict=False,
        )
