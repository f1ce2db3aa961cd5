"""Micro-batch size from free device memory: how many (noise draw x image) rows one early-exit pass can hold.

:meth:`ditf_core.DiTFPipeline.capture` asks :func:`auto_micro_batch` when no ``micro_batch`` is given. On CUDA it
divides the free memory (``torch.cuda.mem_get_info``, the weights already loaded) by an estimate of one row's
activations; anywhere else it returns None and every row goes through one pass, as before. A given micro_batch is
always used as it is, so ``--micro-batch 1`` is the way to try a size the estimate says does not fit.

This is the CLI / Python pipeline's estimate; the ComfyUI nodes ask ComfyUI's model management with their own.

Per row, the estimate holds one block at its widest (``BLOCK_WIDTH`` hidden-size-wide tensors per token: the 4x MLP
input and activation, q/k/v and their normed, rotated copies, the attention output, the residual stream; memory-
efficient / flash attention never holds the token x token scores) plus the float32 copy of the captured image
tokens. Outside the rows it reserves the running float32 sums of the captured layers ([B, N, C] per layer).
``bench/bench_gpu.py`` compares the estimate with the measured peak.
"""

from __future__ import annotations

import torch

from .errors import DiTFInputError
from .recipe import kept_bytes

BLOCK_WIDTH = 16  # hidden-size-wide activations per token at a block's peak (Flux single block: ~13)
USABLE = 0.9  # of the free memory; the rest is left to the allocator's fragmentation and the CUDA context
GIB = 2**30


def auto_micro_batch(
    device: torch.device,
    *,
    rows: int,
    images: int,
    image_tokens: int,
    text_tokens: int,
    hidden_size: int,
    dtype: torch.dtype,
    layers: int,
) -> int | None:
    """Rows per pass that fit the free memory of a CUDA ``device``; None on other devices (all rows at once).

    rows: ensemble x images; image_tokens / text_tokens: tokens per row; layers: captured blocks.
    """
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    per_row = row_bytes(image_tokens=image_tokens, text_tokens=text_tokens, hidden_size=hidden_size, dtype=dtype)
    reserved = kept_bytes(images, image_tokens, hidden_size, layers)  # the running float32 sums
    return choose_micro_batch(rows, per_row=per_row, free=free, reserved=reserved, device=str(device))


def row_bytes(*, image_tokens: int, text_tokens: int, hidden_size: int, dtype: torch.dtype) -> int:
    """Estimated peak activation bytes of one row going through one block (plus its float32 capture)."""
    element = torch.empty((), dtype=dtype).element_size()
    block = BLOCK_WIDTH * (image_tokens + text_tokens) * hidden_size * element
    capture = image_tokens * hidden_size * 4
    return block + capture


def choose_micro_batch(rows: int, *, per_row: int, free: int, reserved: int = 0, device: str = "the device") -> int:
    """min(rows, what fits), at least 1; an error saying what to change when not even one row fits."""
    fitting = int((free * USABLE - reserved) // per_row)
    if fitting < 1:
        raise DiTFInputError(
            f"not enough free memory on {device}: one image with one noise draw needs about "
            f"{(per_row + reserved) / GIB:.2f} GiB of activations, {free / GIB:.2f} GiB are free after the weights. "
            "Lower --resolution, use --dtype bfloat16, capture fewer layers (no sweep), load fewer blocks "
            "(--load-blocks auto), free the GPU of other processes, or pass --micro-batch 1 to try anyway"
        )
    return min(rows, fitting)
