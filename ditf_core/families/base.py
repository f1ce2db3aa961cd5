"""What every DiT family adapter provides, and the pieces they share.

An adapter is data-light: it knows the block list, where double/joint blocks end, how the host calls the
model, where a block's AdaLN modulation layer is, and the family's default settings. Everything else (capture,
ensembling, the recipe) is family-agnostic and lives in :mod:`ditf_core.capture` and :mod:`ditf_core.recipe`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..mapping import PixelMapping

# The most image tokens one image may bring to a pass, for families without a hard limit of their own (Flux's RoPE
# has none). 16384 tokens is a 2048 px square at 16 px per token, 4x the ~1 MP these models are trained at. Past it
# the cost stops being sane: attention grows with the square of the tokens (a 2048 px Flux.1 pass is ~64x the
# attention work of the 640 px default), and where attention is not computed by a memory-efficient kernel
# (ComfyUI's split / sub-quadratic fallbacks, many CPUs) one Flux.1 block's attention scores at 16384 + 512 text
# tokens already take 24 heads x 16896^2 x 2 bytes = 13.7 GB. A tiny Flux took ~4 min for one pass at 4096 px.
MAX_IMAGE_TOKENS = 16384


@dataclass(frozen=True)
class FamilyDefaults:
    """Settings used when the caller leaves them out, and where they come from."""

    layer: int
    t: float
    resolution: int
    ensemble: int
    source: str


@dataclass(frozen=True)
class Modulation:
    """A block's AdaLN modulation of its attention branch, each ``[B, C]`` float32."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class DiTFamily:
    """Base class of a family adapter. Subclasses fill in the class attributes and the abstract methods."""

    name: str = ""
    label: str = ""
    patch: int = 2  # latent cells per token side
    zero_text_tokens: int = 256  # text length of zero conditioning (models loaded without text encoders)
    vae_factor: int = 8  # pixels per latent cell
    max_image_tokens: int | None = MAX_IMAGE_TOKENS  # per image and pass (see MAX_IMAGE_TOKENS)
    token_limit_reason: str = "attention memory and time grow with the square of the token count"
    # How the family's blocks receive (image hidden states, conditioning vector): (keyword, position).
    hidden_arg: tuple[str, int] = ("hidden_states", 0)
    temb_arg: tuple[str, int] = ("temb", 2)

    # --- identification -------------------------------------------------------------------------------
    def matches(self, transformer: nn.Module) -> bool:
        raise NotImplementedError

    # --- structure ------------------------------------------------------------------------------------
    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """All transformer blocks in execution order; the global layer index indexes this list.

        ``blocks``, ``split`` and ``defaults`` read only the block lists (``transformer_blocks``,
        ``single_transformer_blocks``): other hosts pass a structural view holding just those."""
        raise NotImplementedError

    def split(self, transformer: nn.Module) -> int:
        """Index of the first single-stream block (equals the depth when the family has none)."""
        return len(self.blocks(transformer))

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "double" if layer < self.split(transformer) else "single"

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        """The block's modulation layer; its output chunks start with (shift, scale, gate) of attention."""
        raise NotImplementedError

    def attention_out(self, block: nn.Module) -> nn.Linear:
        """The projection whose output the attention-branch gate multiplies into the residual stream."""
        raise NotImplementedError

    def hidden_size(self, transformer: nn.Module) -> int:
        return int(transformer.inner_dim)

    def latent_channels(self, transformer: nn.Module) -> int:
        """Channels of the VAE latent the model denoises (before any token packing)."""
        return int(transformer.config.in_channels)

    # --- running --------------------------------------------------------------------------------------
    def defaults(self, transformer: nn.Module) -> FamilyDefaults:
        raise NotImplementedError

    def check_conditioning(self, transformer: nn.Module, text_embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        cfg = transformer.config
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != cfg.joint_attention_dim:
            raise ValueError(
                f"text_embeds must be [B, L, {cfg.joint_attention_dim}] for this {self.label}, got "
                f"{list(text_embeds.shape)}; encode the prompt with this model's own text encoders."
            )
        if pooled.ndim != 2 or pooled.shape[-1] != cfg.pooled_projection_dim:
            raise ValueError(
                f"pooled must be [B, {cfg.pooled_projection_dim}] for this {self.label}, got {list(pooled.shape)}."
            )

    def max_tokens_per_side(self, transformer: nn.Module) -> int | None:
        """The most tokens along either side of the grid (a hard limit, e.g. position embeddings), or None."""
        return None

    def grid_problem(self, transformer: nn.Module, grid: tuple[int, int]) -> str | None:
        """Why a token grid (w, h) of one image cannot go through the model, or None when it can."""
        side = self.max_tokens_per_side(transformer)
        w, h = grid
        if side is not None and max(w, h) > side:
            return (f"{max(w, h)} tokens along one side, but this {self.label} has position embeddings for at most "
                    f"{side}x{side} tokens ({side * self.patch * self.vae_factor} px)")
        if self.max_image_tokens is not None and w * h > self.max_image_tokens:
            return (f"{w}x{h} = {w * h:,} tokens, more than the {self.max_image_tokens:,} one image may bring to a "
                    f"{self.label} pass ({self.token_limit_reason})")
        return None

    def check_resolution(self, transformer: nn.Module, image_size: tuple[int, int], resolution: int,
                         name: str = "resolution") -> PixelMapping:
        """The mapping of an image of ``image_size`` (W, H) at ``resolution``, or a ``ValueError`` naming the
        largest ``resolution`` this model takes for that image. Cheap: call it before any VAE or transformer work."""
        stride = self.patch * self.vae_factor
        mapping = PixelMapping.for_image(*image_size, resolution, stride)
        problem = self.grid_problem(transformer, mapping.grid_size)
        if problem is None:
            return mapping
        largest = self.largest_resolution(transformer, image_size, resolution)
        width, height = image_size
        fix = (f"the largest {name} for this {width}x{height} image is {largest}" if largest is not None
               else "shrink the image")
        raise ValueError(f"{name} {resolution} gives {problem}; {fix}")

    def largest_resolution(self, transformer: nn.Module, image_size: tuple[int, int], below: int) -> int | None:
        """The largest resolution under ``below``, a multiple of 16 px, whose grid the model takes (None: none)."""
        stride = self.patch * self.vae_factor

        def fits(resolution: int) -> bool:
            grid = PixelMapping.for_image(*image_size, resolution, stride).grid_size
            return self.grid_problem(transformer, grid) is None

        low, high = stride, below - 1  # the grid grows with the resolution: bisect for the last one that fits
        if high < low or not fits(low):
            return None
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(middle) else (low, middle - 1)
        return low - low % stride  # a smaller resolution never has a larger grid, so this fits too

    def check_latent_size(self, transformer: nn.Module, height: int, width: int) -> None:
        """Raise a clear error when a latent of ``height x width`` cells cannot go through the model."""
        if height % self.patch or width % self.patch:
            raise ValueError(
                f"latent size {height}x{width} must be a multiple of {self.patch}; "
                f"resize the image to a multiple of {self.patch * self.vae_factor} pixels."
            )
        problem = self.grid_problem(transformer, (width // self.patch, height // self.patch))
        if problem is not None:
            raise ValueError(f"a latent of {height}x{width} cells gives {problem}; use a smaller image or resolution.")

    def forward(
        self,
        transformer: nn.Module,
        x_t: torch.Tensor,
        t: float,
        text_embeds: torch.Tensor,
        pooled: torch.Tensor,
        guidance: float,
    ) -> Any:
        """Run the host model on noisy latents ``x_t`` [B, C_lat, H, W] at flow-matching time ``t``."""
        raise NotImplementedError

    def block_inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(image hidden states [B, N, C], conditioning vector [B, D]) from a block's call arguments."""
        return _argument(args, kwargs, *self.hidden_arg), _argument(args, kwargs, *self.temb_arg)

    # --- shared computations --------------------------------------------------------------------------
    def modulation(self, block: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
        """Recompute the block's attention-branch AdaLN modulation from its own layer, in float32."""
        return adaln_modulation(self.adaln_linear(block), temb, hidden_size)

    def tokens_to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Image tokens [B, N, C] in row-major patch order -> feature map [B, C, h, w]."""
        b, n, c = tokens.shape
        h, w = grid
        if n != h * w:
            raise ValueError(f"expected {h * w} image tokens for a {h}x{w} grid, got {n}")
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def fingerprint(self, transformer: nn.Module) -> dict:
        """A short, stable description of the model: family, class and a hash of its config."""
        config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        blocks = self.blocks(transformer)
        return {
            "family": self.name,
            "class": type(transformer).__name__,
            "config_sha256": digest,
            "depth": len(blocks),
            "split": self.split(transformer),
            "hidden_size": self.hidden_size(transformer),
        }


def adaln_modulation(linear: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
    """(shift, scale, gate) of an AdaLN-zero layer ``linear(silu(temb))``, computed in float32.

    The weights are upcast so that bf16/fp16 models give the same modulation as their fp32 originals up to the
    rounding of the stored weights.
    """
    weight = linear.weight.to(device=temb.device, dtype=torch.float32)
    bias = None if linear.bias is None else linear.bias.to(device=temb.device, dtype=torch.float32)
    emb = F.linear(F.silu(temb.to(torch.float32)), weight, bias)
    c = hidden_size
    return Modulation(shift=emb[:, :c], scale=emb[:, c : 2 * c], gate=emb[:, 2 * c : 3 * c])


def _argument(args: tuple, kwargs: dict, name: str, position: int) -> torch.Tensor:
    """A call argument read by name and, failing that, by position (some hosts call blocks positionally)."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    raise RuntimeError(f"block was called without '{name}' (positional {position}); unsupported host code")
