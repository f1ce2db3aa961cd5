"""Qwen-Image as diffusers' ``QwenImageTransformer2DModel`` (60 double-stream MMDiT blocks).

Every block is a double-stream block: ``hidden_states`` holds image tokens only. Per-block modulation: the image
stream's ``img_mod = Sequential(SiLU, Linear(C, 6C))``; its first three chunks are the attention branch's
(shift, scale, gate). Latents come from the Qwen-Image VAE (``AutoencoderKLQwenImage``, a Wan-style video VAE:
one frame per image, 16 channels at 1/8) and are packed 2x2 into 64-channel tokens, row-major, as Flux.1. No pooled
text vector; the model is not guidance-distilled.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import DiTFamily
from .flux import pack_latents


class QwenImageFamily(DiTFamily):
    name = "qwen_image"
    label = "Qwen-Image transformer"
    latent_space = "wan"
    zero_text_tokens = 256  # Qwen2.5-VL tokens after the chat template is dropped

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import QwenImageTransformer2DModel

        return isinstance(transformer, QwenImageTransformer2DModel)

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "joint"

    def latent_channels(self, transformer: nn.Module) -> int:
        return int(transformer.config.in_channels) // (self.patch * self.patch)

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        return block.img_mod[1]

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0]

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return None

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        if transformer.config.zero_cond_t:
            raise UnsupportedModelError(
                "this Qwen-Image transformer is an edit model (zero_cond_t: it modulates reference images "
                "separately); DiTF supports the text-to-image Qwen-Image"
            )
        dtype, device = transformer.dtype, x_t.device
        return transformer(
            hidden_states=pack_latents(x_t),
            encoder_hidden_states=text_embeds,
            timestep=torch.full((b,), t, device=device, dtype=dtype),  # scaled by 1000 inside, as the pipeline's
            img_shapes=[(1, h // 2, w // 2)] * b,
            return_dict=False,
        )
