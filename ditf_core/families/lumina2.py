"""Lumina-Image 2.0 (NextDiT) as diffusers' ``Lumina2Transformer2DModel``, and Z-Image as
``ZImageTransformer2DModel`` (the same single-stream NextDiT design).

Blocks: the main joint blocks ``layers`` (Lumina2: 26, Z-Image: 30). The refiner blocks that run first
(``noise_refiner`` on the image alone, ``context_refiner`` on the text alone) prepare the two streams and are not
counted in the global layer index.

Token order in the joint blocks: Lumina2 puts the caption first, then the image (image tokens last: DiTF gives
every caption token as valid, so the sequences are not padded); Z-Image puts the image first (padded to a multiple
of 32 tokens), then the caption.

SCALE-ONLY modulation: a block computes ``(scale, gate, scale_mlp, gate_mlp)`` from the timestep embedding and
feeds its attention ``RMSNorm(x) * (1 + scale)``; the residual gate is ``tanh(gate)``. There is no shift: DiTF's
"shift" is zero for these families, so the recipe's feature is ``(1 + scale) * LayerNorm(h)``.

Time runs backwards: both models take ``1 - t`` (t = 0 is pure noise for them). No pooled text vector.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiTFamily, Modulation, scale_only_modulation


class Lumina2Family(DiTFamily):
    name = "lumina2"
    label = "Lumina2 (NextDiT) transformer"
    latent_space = "kl16"
    zero_text_tokens = 256  # Gemma-2 tokens (the pipeline's max_sequence_length)
    temb_arg = ("temb", 3)  # layer(hidden_states, attention_mask, rotary_emb, temb), called positionally
    double_blocks = "layers"  # the main joint blocks (the refiners are not counted)

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import Lumina2Transformer2DModel

        return isinstance(transformer, Lumina2Transformer2DModel)

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "joint"

    def image_offset(self, transformer: nn.Module, layer: int, total: int, count: int) -> int:
        return total - count  # caption first, image last

    def hidden_size(self, transformer: nn.Module) -> int:
        return int(transformer.config.hidden_size)

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        return block.norm1.linear

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn.to_out[0]

    def text_width(self, transformer: nn.Module) -> int:
        return int(transformer.config.cap_feat_dim)

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return None

    def modulation(self, block: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
        return scale_only_modulation(self.adaln_linear(block), temb, hidden_size)

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        device = x_t.device
        return transformer(
            hidden_states=x_t,
            timestep=torch.full((b,), 1.0 - t, device=device, dtype=transformer.dtype),
            encoder_hidden_states=text_embeds,
            encoder_attention_mask=torch.ones(text_embeds.shape[:2], device=device, dtype=torch.bool),
            return_dict=False,
        )


class ZImageFamily(Lumina2Family):
    name = "z_image"
    label = "Z-Image transformer"
    zero_text_tokens = 512  # Qwen3 tokens
    hidden_arg = ("x", 0)
    temb_arg = ("adaln_input", 3)  # layer(x, attn_mask, freqs_cis, adaln_input, ...), called positionally

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import ZImageTransformer2DModel

        return isinstance(transformer, ZImageTransformer2DModel)

    def image_offset(self, transformer: nn.Module, layer: int, total: int, count: int) -> int:
        return 0  # image first (then its padding, then the caption)

    def hidden_size(self, transformer: nn.Module) -> int:
        return int(transformer.config.dim)

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        return block.adaLN_modulation[0]

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attention.to_out[0]

    def modulation(self, block: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
        # Z-Image's modulation layer is a plain Linear on the timestep embedding (no SiLU in front).
        return scale_only_modulation(self.adaln_linear(block), temb, hidden_size, silu=False)

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        frames = list(x_t.unsqueeze(2).unbind(0))  # one [C, 1, H, W] clip of one frame per image
        captions = list(text_embeds.unbind(0))
        timestep = torch.full((b,), 1.0 - t, device=x_t.device, dtype=transformer.dtype)
        return transformer(frames, timestep, captions, patch_size=self.patch, f_patch_size=1, return_dict=False)
