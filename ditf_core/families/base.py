"""What every DiT family adapter provides, and the pieces they share.

An adapter is data-light: it knows the block list, where double/joint blocks end, how the host calls the
model, where the image tokens sit in a block's input, how a block modulates its attention branch, and the family's
default settings. Everything else (capture, ensembling, the recipe) is family-agnostic and lives in
:mod:`ditf_core.capture` and :mod:`ditf_core.recipe`.

Generic hooks a family may override (all documented below):

* token order - :meth:`DiTFamily.image_offset`: where the image tokens start in a block's hidden states
  (image-only streams and image-first sequences: 0; text-first joint sequences: after the text);
* conditioning - :meth:`text_width`, :meth:`pooled_width` (None: the family takes no pooled vector),
  :meth:`zero_conditioning`; ``text_embeds`` is one tensor [B, L, D], or a dict of batch-first tensors for
  families with several text streams (HiDream);
* noising - :meth:`add_noise`: flow matching by default, DDPM for epsilon-prediction families (PixArt);
* modulation - :meth:`modulation`: per-block AdaLN layers, shared (global) modulation, tables plus a shared
  vector, scale-only RMSNorm modulation;
* latent space - ``patch``, ``vae_factor`` and :meth:`latent_channels` describe the latent the model denoises
  (after the VAE's own normalisation / patchification, see :mod:`ditf_core.latents`).
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

# Text conditioning: one [B, L, D] tensor, or batch-first tensors by name for families with several text streams.
TextEmbeds = torch.Tensor | dict[str, torch.Tensor]

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


# The paper's setting for Flux.1-dev (block 28 of 57, t = 0.26); families without a published setting keep the same
# relative depth (the "relative-depth rule") until the layer finder (``python -m ditf_core tune``) says otherwise.
RELATIVE_DEPTH = 28 / 57
RELATIVE_DEPTH_SOURCE = (
    "no published DiTF setting for {label}: Flux's relative depth (28/57 of the blocks) and t=0.26; "
    "find the best block and t for your images with `python -m ditf_core tune` or the Find DiTF Layer node"
)


class DiTFamily:
    """Base class of a family adapter. Subclasses fill in the class attributes and the abstract methods."""

    name: str = ""
    label: str = ""
    patch: int = 2  # latent cells per token side
    zero_text_tokens: int = 256  # text length of zero conditioning (models loaded without text encoders)
    vae_factor: int = 8  # pixels per latent cell
    max_image_tokens: int | None = MAX_IMAGE_TOKENS  # per image and pass (see MAX_IMAGE_TOKENS)
    token_limit_reason: str = "attention memory and time grow with the square of the token count"
    # Which VAE latent space the family's models use (see ditf_core.latents.LATENT_SPACES); "" = not checked.
    latent_space: str = ""
    # How the family's blocks receive (image hidden states, conditioning vector): (keyword, position).
    hidden_arg: tuple[str, int] = ("hidden_states", 0)
    temb_arg: tuple[str, int] = ("temb", 2)
    # Where the blocks are: the double / joint (or only) block list, then the single-stream list if any.
    double_blocks: str = "transformer_blocks"
    single_blocks: str | None = None
    # Token order of single-stream blocks: True when they see cat(text, image), image tokens last.
    single_text_first: bool = False

    # --- identification -------------------------------------------------------------------------------
    def matches(self, transformer: nn.Module) -> bool:
        raise NotImplementedError

    # --- structure ------------------------------------------------------------------------------------
    def blocks(self, transformer: nn.Module) -> list[nn.Module]:
        """All transformer blocks in execution order; the global layer index indexes this list.

        ``blocks``, ``split`` and ``defaults`` read only the block lists (``double_blocks``, ``single_blocks``):
        other hosts pass a structural view holding just those, under the same names."""
        singles = getattr(transformer, self.single_blocks) if self.single_blocks else []
        return [*getattr(transformer, self.double_blocks), *singles]

    def split(self, transformer: nn.Module) -> int:
        """Index of the first single-stream block (equals the depth when the family has none)."""
        if self.single_blocks:
            return len(getattr(transformer, self.double_blocks))
        return len(self.blocks(transformer))

    def block_kind(self, transformer: nn.Module, layer: int) -> str:
        return "double" if layer < self.split(transformer) else "single"

    def image_offset(self, transformer: nn.Module, layer: int, total: int, count: int) -> int:
        """Token order: index of the first of the ``count`` image tokens among the ``total`` tokens of block
        ``layer``'s hidden states. 0 for image-only streams and image-first sequences (padding, if any, follows
        the image); ``total - count`` in the single-stream blocks of ``single_text_first`` families."""
        return total - count if self.single_text_first and layer >= self.split(transformer) else 0

    def image_tokens(self, transformer: nn.Module, layer: int, hidden: torch.Tensor, count: int) -> torch.Tensor:
        """The image tokens [B, count, C] of a block's hidden states [B, total, C] (see :meth:`image_offset`)."""
        start = self.image_offset(transformer, layer, hidden.shape[1], count)
        return hidden[:, start : start + count]

    def adaln_linear(self, block: nn.Module) -> nn.Linear:
        """The block's modulation layer; its output chunks start with (shift, scale, gate) of attention.
        Families whose blocks have none (shared modulation, tables) do not define it."""
        raise NotImplementedError(f"{self.label} blocks have no per-block AdaLN layer")

    def attention_out(self, block: nn.Module) -> nn.Linear:
        """The projection whose output the attention-branch gate multiplies into the residual stream."""
        raise NotImplementedError

    def signature_parameters(self, block: nn.Module) -> list[torch.Tensor]:
        """Parameters that tell two models of one architecture apart (the inspector's weights digest): by default
        the block's modulation layer and attention output projection."""
        layers = [self.adaln_linear(block), self.attention_out(block)]
        return [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]

    def hidden_size(self, transformer: nn.Module) -> int:
        return int(transformer.inner_dim)

    def latent_channels(self, transformer: nn.Module) -> int:
        """Channels of the (normalised) latent the model denoises, before any token packing."""
        return int(transformer.config.in_channels)

    # --- conditioning ---------------------------------------------------------------------------------
    def text_width(self, transformer: nn.Module) -> int:
        """Width D of the text embeddings [B, L, D] the model takes (the main stream for multi-stream families)."""
        return int(transformer.config.joint_attention_dim)

    def pooled_width(self, transformer: nn.Module) -> int | None:
        """Width of the pooled text vector, or None when the family takes none (its ``pooled`` is ignored)."""
        return int(transformer.config.pooled_projection_dim)

    def zero_conditioning(self, transformer: nn.Module, tokens: int) -> tuple[TextEmbeds, torch.Tensor]:
        """Zero text embeddings of ``tokens`` tokens and a zero pooled vector ([1, 1] when the family takes none)."""
        pooled = self.pooled_width(transformer)
        return torch.zeros(1, tokens, self.text_width(transformer)), torch.zeros(1, pooled or 1)

    def check_conditioning(self, transformer: nn.Module, text_embeds: TextEmbeds, pooled: torch.Tensor) -> None:
        width = self.text_width(transformer)
        if not isinstance(text_embeds, torch.Tensor) or text_embeds.ndim != 3 or text_embeds.shape[-1] != width:
            shape = list(text_embeds.shape) if isinstance(text_embeds, torch.Tensor) else type(text_embeds).__name__
            raise ValueError(
                f"text_embeds must be [B, L, {width}] for this {self.label}, got {shape}; "
                "encode the prompt with this model's own text encoders."
            )
        expected = self.pooled_width(transformer)
        if expected is not None and (pooled.ndim != 2 or pooled.shape[-1] != expected):
            raise ValueError(f"pooled must be [B, {expected}] for this {self.label}, got {list(pooled.shape)}.")

    def token_side_limit(self, transformer: nn.Module) -> int | None:
        """Tokens per side the model's learned position embeddings cover (a hard limit; None: no such limit)."""
        return None

    def grid_problem(self, transformer: nn.Module, grid: tuple[int, int]) -> str | None:
        """Why a token grid (w, h) of one image cannot go through the model, or None when it can."""
        side = self.token_side_limit(transformer)
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

    # --- running --------------------------------------------------------------------------------------
    def defaults(self, transformer: nn.Module) -> FamilyDefaults:
        """The relative-depth rule (see ``RELATIVE_DEPTH``); families with a published setting override it."""
        depth = len(self.blocks(transformer))
        return FamilyDefaults(
            layer=relative_depth_layer(depth),
            t=0.26,
            resolution=640,
            ensemble=8,
            source=RELATIVE_DEPTH_SOURCE.format(label=self.label),
        )

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
        """x_t at DiTF time ``t`` (recipe step 3): flow matching by default."""
        return flow_matching_noise(clean, noise, t)

    def forward(
        self,
        transformer: nn.Module,
        x_t: torch.Tensor,
        t: float,
        text_embeds: TextEmbeds,
        pooled: torch.Tensor,
        guidance: float,
    ) -> Any:
        """Run the host model on noisy latents ``x_t`` [B, C_lat, H, W] at flow-matching time ``t``."""
        raise NotImplementedError

    def block_inputs(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
        """(hidden states [B, N, C], conditioning vector) from a block's call arguments. The vector is whatever
        :meth:`modulation` reads: a [B, D] embedding, or per-block / shared modulation parameters."""
        return call_argument(args, kwargs, *self.hidden_arg), call_argument(args, kwargs, *self.temb_arg)

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


def flow_matching_noise(clean: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """``t * noise + (1 - t) * clean`` (Flux, SD3 and every rectified-flow family)."""
    return t * noise + (1.0 - t) * clean


class TableModulatedFamily(DiTFamily):
    """Blocks with adaLN-single modulation (PixArt, Wan): one shared per-step vector, to which each block adds its
    learned ``scale_shift_table``; rows 0, 1, 2 are the (self-)attention's (shift, scale, gate). Text enters
    through cross-attention: no pooled vector."""

    def attention_out(self, block: nn.Module) -> nn.Linear:
        return block.attn1.to_out[0]

    def signature_parameters(self, block: nn.Module) -> list[torch.Tensor]:
        out = self.attention_out(block)
        return [block.scale_shift_table, out.weight, out.bias]

    def pooled_width(self, transformer: nn.Module) -> int | None:
        return None

    def modulation(self, block: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
        return table_modulation(block.scale_shift_table, temb, hidden_size)


def relative_depth_layer(depth: int) -> int:
    """Block index at Flux's relative depth (28 of 57) in a model of ``depth`` blocks."""
    return min(depth - 1, round(RELATIVE_DEPTH * depth))


def adaln_modulation(linear: nn.Module, temb: torch.Tensor, hidden_size: int) -> Modulation:
    """(shift, scale, gate) of an AdaLN-zero layer ``linear(silu(temb))``, computed in float32.

    The weights are upcast so that bf16/fp16 models give the same modulation as their fp32 originals up to the
    rounding of the stored weights.
    """
    return split_modulation(_silu_linear(linear, temb), hidden_size)


def split_modulation(chunks: torch.Tensor, hidden_size: int) -> Modulation:
    """(shift, scale, gate) from the first three [B, C] chunks of a [B, k * C] modulation, as float32."""
    c = hidden_size
    emb = chunks.to(torch.float32)
    return Modulation(shift=emb[:, :c], scale=emb[:, c : 2 * c], gate=emb[:, 2 * c : 3 * c])


def scale_only_modulation(linear: nn.Module, temb: torch.Tensor, hidden_size: int, *, silu: bool = True) -> Modulation:
    """Lumina2 / Z-Image (NextDiT) blocks modulate with ``RMSNorm(x) * (1 + scale)`` and gate the attention output
    with ``tanh(gate)``; their layer's chunks are (scale, gate, scale_mlp, gate_mlp). There is no shift: it is
    returned as zeros, so the recipe's ``(1 + scale) * LN(h) + shift`` becomes ``(1 + scale) * LN(h)``.
    ``silu``: whether the layer applies SiLU to its input first (Lumina2 does, Z-Image does not)."""
    emb = _silu_linear(linear, temb, activation=silu)
    c = hidden_size
    scale = emb[:, :c]
    return Modulation(shift=torch.zeros_like(scale), scale=scale, gate=torch.tanh(emb[:, c : 2 * c]))


def table_modulation(table: torch.Tensor, vector: torch.Tensor, hidden_size: int) -> Modulation:
    """(shift, scale, gate) of blocks that add a learned per-block table [1, k, C] to a shared per-step vector
    (PixArt's adaLN-single, Wan): ``table + vector.reshape(B, k, C)``, in float32."""
    b = vector.shape[0]
    rows = table.to(device=vector.device, dtype=torch.float32).reshape(1, -1, hidden_size)
    emb = rows + vector.to(torch.float32).reshape(b, -1, hidden_size)
    return Modulation(shift=emb[:, 0], scale=emb[:, 1], gate=emb[:, 2])


def _silu_linear(linear: nn.Module, temb: torch.Tensor, *, activation: bool = True) -> torch.Tensor:
    weight = linear.weight.to(device=temb.device, dtype=torch.float32)
    bias = None if linear.bias is None else linear.bias.to(device=temb.device, dtype=torch.float32)
    x = temb.to(torch.float32)
    return F.linear(F.silu(x) if activation else x, weight, bias)


def call_argument(args: tuple, kwargs: dict, name: str, position: int) -> torch.Tensor:
    """A call argument read by name and, failing that, by position (some hosts call blocks positionally)."""
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    raise RuntimeError(f"block was called without '{name}' (positional {position}); unsupported host code")
