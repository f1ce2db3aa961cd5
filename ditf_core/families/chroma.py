"""Chroma (Flux.1-schnell derivative) as diffusers' ``ChromaTransformer2DModel``.

Blocks and token order as Flux.1: double-stream blocks (19) see image tokens only, then single-stream blocks (38)
see ``cat(text, image)`` - image tokens last. Latents are packed 2x2 into 64-channel tokens, as Flux.1.

PRUNED modulation: Chroma removed the per-block AdaLN layers. One small network (``distilled_guidance_layer``,
the "approximator") emits every block's modulation vectors at once from the timestep; the model hands each block
its own slice as ``temb``: [B, 12, C] for a double block (image stream's 6 vectors first), [B, 3, C] for a single
block. Vectors 0, 1, 2 are the attention branch's (shift, scale, gate). There is no pooled text vector and no
guidance input.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiTFamily, Modulation
from .flux import image_position_ids, pack_latents


class ChromaFamily(DiTFamily):
    name = "chroma"
    label = "Chroma transformer"
    latent_space = "kl16"
    zero_text_tokens = 512  # T5 tokens
    single_blocks = "single_transformer_blocks"
    single_text_first = True  # single blocks see cat(text, image)

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import ChromaTransformer2DModel

        return isinstance(transformer, ChromaTransformer2DModel)

    def latent_channels(self, transformer: nn.Module) -> int:
        return int(transformer.config.in_channels) // (self.patch * self.patch)

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0] if hasattr(block, "norm1") else block.proj_out

    def signature_parameters(self, block: nn.Module) -> list[torch.Tensor]:
        out = self.attention_out(block)
        return [out.weight, out.bias]

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return None

    def modulation(self, block: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
        vectors = temb.to(torch.float32)  # the block's own slice of the approximator's output
        return Modulation(shift=vectors[:, 0], scale=vectors[:, 1], gate=vectors[:, 2])

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        dtype, device = transformer.dtype, x_t.device
        return transformer(
            hidden_states=pack_latents(x_t),
            encoder_hidden_states=text_embeds,
            timestep=torch.full((b,), t, device=device, dtype=dtype),
            img_ids=image_position_ids(h // 2, w // 2, device, dtype),
            txt_ids=torch.zeros(text_embeds.shape[1], 3, device=device, dtype=dtype),
            return_dict=False,
        )
