"""Capture what enters chosen transformer blocks, and stop the forward pass after the last of them.

One mechanism for every diffusers family: a forward pre-hook on each requested block reads the block's inputs
(by name and by position), keeps a copy, and on the deepest requested block raises a private ``StopForward`` so
the rest of the model never runs. With an ``interrupt`` callable, every block up to the deepest requested one
calls it first, so a Cancel stops a long pass (minutes at 2048 px on a CPU) within one block. Hooks are removed in
``finally``: after success, errors, interrupts and KeyboardInterrupt alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .families import DiTFamily


class StopForward(Exception):
    """Raised inside the model to end the forward pass early; never escapes :func:`capture_blocks`."""


# consume(layer, hidden [m, N, C], vector [m, D]): called by a host the moment a block input is captured, while
# the tensors are still valid (hosts may modify block inputs in place afterwards, so nothing is kept).
Consumer = Callable[[int, torch.Tensor, torch.Tensor], None]
# interrupt(): called before each block of a capture pass; raises to stop the pass (ComfyUI: Cancel pressed).
Interrupt = Callable[[], None]


def check_layers(transformer: nn.Module, family: DiTFamily, layers: Iterable[int], name: str = "layer") -> list[int]:
    """Sorted unique global block indices, or a ``ValueError`` naming the valid range and the input ``name``
    ("layer": one block; any other name, e.g. the Inspector's "layers", holds several)."""
    depth = len(family.blocks(transformer))
    checked = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{name} must hold int block indices, got {layer!r}")
        if not 0 <= layer < depth:
            split = family.split(transformer)
            detail = f" (0..{split - 1} double blocks, {split}..{depth - 1} single blocks)" if split < depth else ""
            which = f"{name} {layer}" if name == "layer" else f"block {layer} in {name}"
            raise ValueError(f"{which} is out of range for this {family.label}: use 0..{depth - 1}{detail}.")
        checked.append(layer)
    if not checked:
        raise ValueError(f"no block given in {name}: pass at least one block index")
    return sorted(set(checked))


def capture_blocks(
    transformer: nn.Module,
    family: DiTFamily,
    layers: Iterable[int],
    run: Callable[[], object],
    consume: Consumer,
    interrupt: Interrupt | None = None,
    tokens: int | None = None,
) -> None:
    """Call ``run()`` (which runs ``transformer``) and hand the inputs of blocks ``layers`` to ``consume``.

    ``consume(layer, hidden [m, N, C], temb [m, D])`` is called inside the forward pass, as each block is reached;
    the forward pass stops when the deepest requested block is reached. ``interrupt()``, when given, is called
    before every block up to that one; whatever it raises ends the pass (and propagates). ``tokens``: the number of
    image tokens; when given, ``hidden`` is only those (the family's token order says where they sit among text and
    padding).
    """
    layers = check_layers(transformer, family, layers)
    blocks = family.blocks(transformer)
    last = layers[-1]
    reached: set[int] = set()

    def hook_for(index: int):
        captured = index in layers

        def hook(module, args, kwargs):
            if interrupt is not None:
                interrupt()
            if not captured:
                return None
            hidden, temb = family.block_inputs(args, kwargs)
            if tokens is not None:
                hidden = family.image_tokens(transformer, index, hidden, tokens)
            consume(index, hidden.detach(), temb.detach())
            reached.add(index)
            if index == last:
                raise StopForward
            return None

        return hook

    hooked = range(last + 1) if interrupt is not None else layers
    handles = []
    try:
        for index in hooked:
            handles.append(blocks[index].register_forward_pre_hook(hook_for(index), with_kwargs=True))
        try:
            run()
        except StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()
    check_reached(layers, reached)


def check_reached(layers: Iterable[int], reached: set[int]) -> None:
    missing = [layer for layer in layers if layer not in reached]
    if missing:
        raise RuntimeError(f"the forward pass never reached block(s) {missing}; does another patch replace them?")
