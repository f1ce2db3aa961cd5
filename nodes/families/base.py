"""What a ComfyUI-host family adapter provides: how one comfy.ldm model family looks from inside its blocks.

The mechanism (clone, patches, model management, running the model) lives in ``nodes/comfy_host.py``; an adapter
only describes. It never touches ModelPatcher or model management. Each adapter pairs a ``comfy.ldm`` model class
with the ``ditf_core.families`` adapter of the same family, so block counts, the stream split and the defaults come
from one place for both hosts.

A block patch receives ComfyUI's ``args`` dict (``img``, ``txt``, ``vec``, ...). The adapter says

* how its blocks are reached (``mechanism``): ``"dit_patch"`` - ComfyUI's ``patches_replace["dit"]``, keyed
  ``("double_block", i)`` / ``("single_block", i)`` (:meth:`ComfyFamily.patch_key`); or ``"object_patch"`` for
  families whose forward has no such hook (HiDream, Lumina2, PixArt in ComfyUI 0.3.64): a ModelPatcher object patch
  on the clone replaces the block at :meth:`ComfyFamily.block_path` by a shallow copy of it whose ``forward``
  reports the block's input first; :meth:`ComfyFamily.call_args` turns that call's arguments into the same
  ``args`` dict a dit patch gets;
* where the image tokens sit in ``args[stream_key]`` (single-stream blocks see ``cat(txt, img)``),
* how the block modulates its image stream's attention branch: ``(shift | scale | gate)`` as one ``[m, 3C]`` tensor,
  computed by the block's own modules (so fp8 weights, LoRA patches and offloading apply as in sampling);
* how the model is called: :meth:`model_input` (video models take one-frame clips), :meth:`sigma` (the model's
  sigma for DiTF time t), :meth:`cond_kwargs` (what ``extra_conds`` needs besides text and pooled vector).

Generic on top of that (no per-family code): the token layout of a forward pass (:meth:`ComfyFamily.token_layout`)
and reading / writing a block's image tokens in its ``args`` (:meth:`ComfyFamily.image_tokens`,
:meth:`ComfyFamily.with_image_tokens`), which the massive-activation patches use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from ...ditf_core.families import DiTFamily


@dataclass(frozen=True)
class HostShape:
    """What the host learns from the loaded diffusion model.

    structure: the block lists in the layout ``ditf_core.families`` adapters read (``transformer_blocks`` /
    ``single_transformer_blocks``); context_dim / pooled_dim: widths of the text conditioning (pooled None when the
    family takes none). The resolution bound is the ``ditf_core`` family's (``DiTFamily.grid_problem``), read
    off ``structure`` (SD3: ``structure.config.pos_embed_max_size``).
    """

    structure: SimpleNamespace
    hidden_size: int
    context_dim: int
    pooled_dim: int | None
    # Further text streams the family's conditioning carries (HiDream: {"conditioning_llama3": (layers, -1, width)}):
    # key -> shape of one sample, -1 where the token count goes. Zero conditioning fills them with zeros.
    text_streams: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLayout:
    """Where the image tokens sit in one forward pass: ``text_tokens`` (single-stream blocks see ``cat(txt, img)``),
    the (rows, cols) token ``grid`` of the latent, and the pass's ``sigma``."""

    text_tokens: int
    grid: tuple[int, int]
    sigma: float

    @property
    def image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


class ComfyFamily:
    """Base class of a ComfyUI-host family adapter."""

    core: DiTFamily  # the ditf_core adapter of the same family
    supported: str = ""  # how the family is named in errors
    stream_key: str = "img"  # the args entry that carries the image tokens
    mechanism: str = "dit_patch"  # "dit_patch" (patches_replace["dit"]) or "object_patch" (see the module docstring)
    video: bool = False  # the model takes [B, C, F, H, W] clips: a single image is one frame

    def matches(self, base: Any, diffusion: Any) -> bool:
        """Whether ComfyUI's BaseModel ``base`` with diffusion model ``diffusion`` is this family."""
        raise NotImplementedError

    def shape(self, diffusion: Any) -> HostShape:
        """Inspect the diffusion model; raise ``UnsupportedModelError`` for variants DiTF cannot read."""
        raise NotImplementedError

    def patch_key(self, structure: SimpleNamespace, layer: int) -> tuple[str, int]:
        """The ``patches_replace["dit"]`` key of global block ``layer``."""
        split = self.core.split(structure)
        return ("single_block", layer - split) if layer >= split else ("double_block", layer)

    def image_slice(self, structure: SimpleNamespace, layer: int, text_tokens: int, image_tokens: int) -> slice:
        """Where the image tokens of the main image sit in ``args[stream_key]`` along dim 1 (reference images
        some families append after them are left out)."""
        start = text_tokens if layer >= self.core.split(structure) else 0
        return slice(start, start + image_tokens)

    def modulation(self, block: Any, layer: int, args: dict) -> torch.Tensor:
        """The block's attention-branch modulation of the image stream, ``(shift | scale | gate)`` [m, 3C] float32."""
        raise NotImplementedError

    def token_layout(self, latent: torch.Tensor, context: torch.Tensor | None, sigma: torch.Tensor) -> TokenLayout:
        """The layout of a pass over ``latent`` [m, C, H, W] with text ``context`` [m, L, D] (as ``apply_model`` gets
        them): the model pads the latent to whole patches, and its text stream is as long as the context."""
        patch = self.core.patch
        height, width = latent.shape[-2:]
        grid = ((height + patch - 1) // patch, (width + patch - 1) // patch)
        return TokenLayout(0 if context is None else int(context.shape[1]), grid, float(sigma.reshape(-1)[0]))

    def image_tokens(self, structure: SimpleNamespace, layer: int, args: dict, layout: TokenLayout) -> torch.Tensor:
        """The image tokens entering block ``layer``: a view [m, N, C] of ``args[stream_key]``."""
        tokens = self.image_slice(structure, layer, layout.text_tokens, layout.image_tokens)
        return args[self.stream_key][:, tokens]

    def with_image_tokens(self, structure: SimpleNamespace, layer: int, args: dict, layout: TokenLayout,
                          tokens: torch.Tensor, rows: torch.Tensor | None = None) -> dict:
        """A copy of ``args`` whose image tokens (of ``rows``, all rows if None) are ``tokens`` [m or len(rows), N, C].
        The caller's stream tensor is left as it was."""
        where = self.image_slice(structure, layer, layout.text_tokens, layout.image_tokens)
        stream = args[self.stream_key].clone()
        if rows is None:
            stream[:, where] = tokens.to(stream.dtype)
        else:
            stream[rows.to(stream.device), where] = tokens.to(stream.dtype)
        return {**args, self.stream_key: stream}

    # --- object-patch families ----------------------------------------------------------------------------
    def block_path(self, structure: SimpleNamespace, layer: int) -> str:
        """Object path of global block ``layer`` under ComfyUI's BaseModel (``diffusion_model.layers.3``)."""
        raise NotImplementedError(f"{type(self).__name__} reaches its blocks through patches_replace['dit']")

    def call_args(self, args: tuple, kwargs: dict) -> dict:
        """A block call's arguments as the ``args`` dict a dit patch would get (at least ``stream_key``, ``vec``)."""
        raise NotImplementedError

    # --- calling the model ----------------------------------------------------------------------------------
    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Noisy latents [B, C, h, w] as the diffusion model takes them (video models: one frame)."""
        return x.unsqueeze(2) if self.video else x

    def sigma(self, model_sampling: Any, t: float) -> float:
        """The model's sigma for DiTF time ``t``. Flow models: ``t`` itself (they noise as t * noise + (1 - t) * x0)."""
        return t

    def cond_kwargs(self, kwargs: dict, x: torch.Tensor) -> dict:
        """Keyword arguments of ``BaseModel.extra_conds`` (``cross_attn``, ``pooled_output``, ``guidance`` and any
        text streams) adjusted for the family; ``x`` is the model input."""
        return kwargs


def flat_modulation(batch: int, *parts: torch.Tensor) -> torch.Tensor:
    """(shift, scale, gate), each [m, C] or [m, 1, C], as one float32 [m, 3C]."""
    return torch.cat([part.reshape(batch, -1) for part in parts], dim=1).float()


def zero_text_streams(streams: dict, tokens: int) -> dict:
    """Zero tensors [1, ...] for ``HostShape.text_streams`` with ``tokens`` where the shape says -1."""
    return {key: torch.zeros(1, *[tokens if size == -1 else size for size in shape]) for key, shape in streams.items()}

