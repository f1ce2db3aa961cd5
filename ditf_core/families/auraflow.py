"""AuraFlow as diffusers' ``AuraFlowTransformer2DModel``.

Blocks: MMDiT joint blocks (4 in AuraFlow v0.3) that see image tokens only, then single DiT blocks (32) that see
``cat(registers + text, image)`` - image tokens last. Per-block AdaLN-zero modulation (``norm1.linear`` of
``silu(temb)``, no bias); its first three chunks are the attention branch's (shift, scale, gate). Learned position
embeddings cover at most ``sqrt(pos_embed_max_size)`` tokens per side. 4-channel SDXL VAE latents; no pooled text.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import DiTFamily


class AuraFlowFamily(DiTFamily):
    name = "auraflow"
    label = "AuraFlow transformer"
    latent_space = "kl4"
    zero_text_tokens = 256  # Pile-T5 tokens
    double_blocks = "joint_transformer_blocks"
    single_blocks = "single_transformer_blocks"
    single_text_first = True  # single blocks see cat(registers + text, image)

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import AuraFlowTransformer2DModel

        return isinstance(transformer, AuraFlowTransformer2DModel)

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        return block.norm1.linear

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0]

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return None

    def token_side_limit(self, transformer: nn.Module) -> int | None:
        return math.isqrt(transformer.config.pos_embed_max_size)

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        return transformer(
            hidden_states=x_t,
            encoder_hidden_states=text_embeds,
            timestep=torch.full((b,), t, device=x_t.device, dtype=transformer.dtype),  # scaled by 1000 inside
            return_dict=False,
        )
