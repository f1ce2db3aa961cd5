"""PixArt-alpha / PixArt-Sigma as diffusers' ``PixArtTransformer2DModel`` (28 DiT blocks with cross-attention).

Every block sees image tokens only (text enters through cross-attention), row-major over the (H/2, W/2) grid.
Modulation is adaLN-single: one shared ``adaln_single(t)`` vector [B, 6C] per step, plus each block's learned
``scale_shift_table`` [6, C]; the sum's rows 0, 1, 2 are the attention branch's (shift, scale, gate).

PixArt is an epsilon-prediction DDPM model, not a flow-matching one. DiTF's ``t`` in (0, 1) maps to the discrete
timestep ``k = round(1000 t)`` (t = 0.26 -> k = 260, the paper's "t = 260") and x_t is noised as DDPM does:
``sqrt(abar_k) x0 + sqrt(1 - abar_k) noise`` with the models' linear beta schedule (0.0001 .. 0.02).
Latents: the 4-channel SD VAE (PixArt-alpha) or SDXL VAE (PixArt-Sigma).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import TableModulatedFamily

TRAIN_STEPS, BETA_START, BETA_END = 1000, 0.0001, 0.02


class PixArtFamily(TableModulatedFamily):
    name = "pixart"
    label = "PixArt transformer"
    latent_space = "kl4"
    zero_text_tokens = 120  # T5 tokens of PixArt-alpha prompts (Sigma: 300)
    temb_arg = ("timestep", 4)

    def matches(self, transformer: nn.Module) -> bool:
        from diffusers import PixArtTransformer2DModel

        return isinstance(transformer, PixArtTransformer2DModel)

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "cross"

    def hidden_size(self, transformer: nn.Module) -> int:
        return int(transformer.inner_dim)

    def text_width(self, transformer: nn.Module) -> int:
        return int(transformer.config.caption_channels)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        signal = alphas_cumprod()[ddpm_timestep(t)]
        return signal.sqrt() * clean + (1.0 - signal).sqrt() * noise

    def forward(self, transformer, x_t, t, text_embeds, pooled, guidance):
        b, _, h, w = x_t.shape
        self.check_latent_size(transformer, h, w)
        device = x_t.device
        extra = {"resolution": None, "aspect_ratio": None}
        if transformer.use_additional_conditions:  # PixArt-alpha 1024: image size and aspect ratio, in pixels
            pixels = torch.tensor([[h * self.vae_factor, w * self.vae_factor]], device=device, dtype=x_t.dtype)
            extra = {"resolution": pixels.expand(b, 2), "aspect_ratio": torch.full((b, 1), h / w, device=device)}
        return transformer(
            hidden_states=x_t,
            encoder_hidden_states=text_embeds,
            timestep=torch.full((b,), ddpm_timestep(t), device=device, dtype=torch.long),
            added_cond_kwargs=extra,
            return_dict=False,
        )


def ddpm_timestep(t: float) -> int:
    """The discrete DDPM timestep for DiTF time ``t`` in (0, 1): ``round(1000 t)``, at most 999."""
    return min(TRAIN_STEPS - 1, round(t * TRAIN_STEPS))


def alphas_cumprod() -> torch.Tensor:
    """[1000] cumulative products of (1 - beta) of PixArt's linear beta schedule, in float64."""
    betas = torch.linspace(BETA_START, BETA_END, TRAIN_STEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)
