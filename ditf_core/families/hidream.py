"""HiDream-I1 as diffusers' ``HiDreamImageTransformer2DModel``.

Blocks: double-stream blocks (16) then single-stream blocks (32), each wrapped in a ``HiDreamBlock`` (the hooked
module). Token order: image first in both kinds - double blocks see image tokens only, single blocks see
``cat(image, text)``. Non-square latents are padded to the model's ``max_seq`` tokens (image tokens first, padding
after, masked out), so the image tokens always start at 0.

Per-block modulation: ``adaLN_modulation = Sequential(SiLU, Linear)`` of ``temb`` (timestep + pooled text
embedding); its first three chunks are the image stream's attention (shift, scale, gate) in both block kinds.

Text: two streams - T5 tokens and the hidden states of several Llama-3.1 layers. ``text_embeds`` is a dict of
batch-first tensors: ``{"context": T5 [B, L, D_t5], "conditioning_llama3": [B, layers, L', D_llama]}`` (the
keys ComfyUI's HiDream conditioning uses), plus a pooled CLIP vector [B, P].
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DiTFamily, TextEmbeds

LLAMA_KEY = "conditioning_llama3"


class HiDreamFamily(DiTFamily):
    name = "hidream"
    label = "HiDream transformer"
    latent_space = "kl16"
    zero_text_tokens = 128  # T5 and Llama tokens of HiDream prompts (the pipeline's max_sequence_length)
    double_blocks = "double_stream_blocks"
    single_blocks = "single_stream_blocks"  # image first, then text: image tokens start at 0

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import HiDreamImageTransformer2DModel

        return isinstance(transformer, HiDreamImageTransformer2DModel)

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        return block.block.adaLN_modulation[1]

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.block.attn1.to_out

    def text_width(self, transformer: nn.Module) -> int:
        return int(transformer.config.caption_channels[0])

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return int(transformer.config.text_emb_dim)

    def zero_conditioning(self, transformer: nn.Module, tokens: int) -> tuple[TextEmbeds, torch.Tensor]:
        config = transformer.config
        llama = torch.zeros(1, max(config.llama_layers) + 1, tokens, config.caption_channels[1])
        text = {"context": torch.zeros(1, tokens, self.text_width(transformer)), LLAMA_KEY: llama}
        return text, torch.zeros(1, self.pooled_width(transformer))

    def check_conditioning(self, transformer: nn.Module, text_embeds: TextEmbeds, pooled: torch.Tensor) -> None:
        config = transformer.config
        layers, llama_width = max(config.llama_layers) + 1, config.caption_channels[1]
        if not isinstance(text_embeds, dict) or set(text_embeds) != {"context", LLAMA_KEY}:
            raise ValueError(
                f"HiDream takes two text streams: text_embeds must be a dict {{'context': T5 [B, L, "
                f"{self.text_width(transformer)}], '{LLAMA_KEY}': Llama [B, {layers}, L, {llama_width}]}}"
            )
        super().check_conditioning(transformer, text_embeds["context"], pooled)
        llama = text_embeds[LLAMA_KEY]
        if llama.ndim != 4 or llama.shape[1] < layers or llama.shape[-1] != llama_width:
            raise ValueError(f"{LLAMA_KEY} must be [B, {layers}, L, {llama_width}], got {list(llama.shape)}")

    def check_latent_size(self, transformer: nn.Module, height: int, width: int) -> None:
        super().check_latent_size(transformer, height, width)
        tokens = (height // self.patch) * (width // self.patch)
        if height != width and tokens > transformer.max_seq:
            raise ValueError(
                f"this HiDream model pads non-square images to {transformer.max_seq} tokens; a {height}x{width} "
                "latent has more: lower the resolution"
            )

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        return transformer(
            hidden_states=x_t,
            timesteps=torch.full((b,), t * 1000.0, device=x_t.device, dtype=transformer.dtype),
            encoder_hidden_states_t5=text_embeds["context"],
            encoder_hidden_states_llama3=text_embeds[LLAMA_KEY].movedim(1, 0),  # the model wants [layers, B, L, D]
            pooled_embeds=pooled,
            return_dict=False,
        )
