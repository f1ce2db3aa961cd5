"""SD3 / SD3.5 MMDiT as diffusers' ``SD3Transformer2DModel`` (joint blocks; SD3.5 adds dual attention, qk norm).

All blocks are joint (two-stream) blocks; the image stream's ``hidden_states`` is image tokens only, row-major
over the (H/2, W/2) patch grid. No DiTF setting was published for SD3: the defaults follow the relative-depth rule.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiTFamily


class SD3Family(DiTFamily):
    name = "sd3"
    label = "SD3/SD3.5 transformer"
    zero_text_tokens = 333  # 77 CLIP + 256 T5 tokens
    latent_space = "kl16"

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import SD3Transformer2DModel

        return isinstance(transformer, SD3Transformer2DModel)

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "joint"

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        # AdaLayerNormZero (6 chunks) or SD3.5's SD35AdaLayerNormZeroX (9); both start with shift, scale, gate.
        return block.norm1.linear

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0]

    def token_side_limit(self, transformer: nn.Module) -> int | None:
        # The learned position embeddings are cropped from a pos_embed_max_size^2 table: a hard limit per side.
        return transformer.config.pos_embed_max_size

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        # diffusers' SD3 takes the timestep on the 0..1000 scale (the scheduler's sigma * 1000).
        timestep = torch.full((b,), t * 1000.0, device=x_t.device, dtype=transformer.dtype)
        return transformer(
            hidden_states=x_t,
            encoder_hidden_states=text_embeds,
            pooled_projections=pooled,
            timestep=timestep,
            return_dict=False,
        )
