"""Per family: a block's attention module and the block's own norm of the image stream (test_families uses them to
check that the modulation we read is exactly what the block feeds its attention)."""

from __future__ import annotations


def fed(args, kwargs):
    """The (normalised, modulated) hidden states an attention module was called with."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _double_or_single(double_norm, single_norm, attention="attn"):
    def pick(block):
        norm = double_norm(block) if hasattr(block, "norm1") else single_norm(block)
        return getattr(block, attention), norm

    return pick


ATTENTION_INPUTS = {
    "flux2": _double_or_single(lambda b: b.norm1, lambda b: b.norm),
    "chroma": _double_or_single(lambda b: b.norm1.norm, lambda b: b.norm.norm),
    "qwen_image": lambda b: (b.attn, b.img_norm1),
    "lumina2": lambda b: (b.attn, b.norm1.norm),  # RMSNorm with its own weight; scale-only modulation
    "z_image": lambda b: (b.attention, b.attention_norm1),
    "hidream": lambda b: (b.block.attn1, b.block.norm1_i),
    "pixart": lambda b: (b.attn1, b.norm1),
    "auraflow": lambda b: (b.attn, b.norm1.norm),
    "wan": lambda b: (b.attn1, b.norm1),
}
