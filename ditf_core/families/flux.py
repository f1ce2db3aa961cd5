"""Flux (dev, schnell and guidance-free variants) as diffusers' ``FluxTransformer2DModel``.

Block order: 19 double-stream blocks (global 0..18), then 38 single-stream blocks (19..56) in Flux.1.
Image latents are packed 2x2 into 64-channel tokens, row-major over the (H/2, W/2) grid.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiTFamily, FamilyDefaults, relative_depth_layer

# The paper's setting for Flux.1-dev (DiTF, Gan et al. 2025; official eval script): block 28 of 57, t = 260/1000,
# 640 px long side, ensemble of 8. On other depths we keep the same relative depth.
# Massive-activation channels of Flux.1-dev reported by the paper (hidden size 3072).
PAPER_MASSIVE_CHANNELS = (154, 1446)


class FluxFamily(DiTFamily):
    name = "flux"
    label = "Flux transformer"
    zero_text_tokens = 512  # T5 tokens of Flux.1-dev prompts
    # RoPE positions have no hard limit, so the bound is base.MAX_IMAGE_TOKENS (a 2048 px square): Flux.1 is trained
    # up to ~2 MP, and past it one pass costs minutes to hours and, without a memory-efficient attention kernel,
    # 13.7 GB of attention scores per block.
    token_limit_reason = ("Flux has no hard limit; DiTF bounds the cost: attention memory and time grow with the "
                          "square of the token count")
    latent_space = "kl16"
    single_blocks = "single_transformer_blocks"

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import FluxTransformer2DModel

        return isinstance(transformer, FluxTransformer2DModel)

    def latent_channels(self, transformer: nn.Module) -> int:
        return int(transformer.config.in_channels) // (self.patch * self.patch)  # tokens pack 2x2 latent cells

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        # Double blocks: norm1 (6 chunks, image stream); single blocks: norm (3 chunks).
        return block.norm1.linear if hasattr(block, "norm1") else block.norm.linear

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0] if hasattr(block, "norm1") else block.proj_out

    def defaults(self, transformer: nn.Module) -> FamilyDefaults:
        return FamilyDefaults(
            layer=relative_depth_layer(len(self.blocks(transformer))),  # 28 on Flux.1's 57 blocks
            t=0.26,
            resolution=640,
            ensemble=8,
            source="DiTF paper / official eval script for Flux.1-dev (k=28 of 57, t=260, 640 px, E=8)",
        )

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, c, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        dtype, device = transformer.dtype, x_t.device
        packed = pack_latents(x_t)
        img_ids = image_position_ids(h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(text_embeds.shape[1], 3, device=device, dtype=dtype)
        use_guidance = bool(transformer.config.guidance_embeds)
        return transformer(
            hidden_states=packed,
            encoder_hidden_states=text_embeds,
            pooled_projections=pooled,
            timestep=torch.full((b,), t, device=device, dtype=dtype),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=torch.full((b,), guidance, device=device, dtype=dtype) if use_guidance else None,
            return_dict=False,
        )


# diffusers keeps these two as private static methods of FluxPipeline, whose import pulls in transformers'
# image processors; they are short enough to state here, in the same token order.
def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] latents -> [B, (H/2)(W/2), 4C] tokens: 2x2 cells per token, row-major over the token grid."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def image_position_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """[height*width, 3] RoPE ids of the image tokens: (0, row, column)."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(dtype)
