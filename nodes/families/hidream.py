"""HiDream-I1 in the ComfyUI host (``comfy.ldm.hidream``). ComfyUI 0.3.64's HiDream forward has no
patches_replace["dit"]: blocks are reached with ModelPatcher object patches on the clone (``mechanism``), at
``diffusion_model.double_stream_blocks.<i>`` / ``single_stream_blocks.<i>``.

Blocks are called with keywords ``image_tokens`` (image first; single blocks append the text after it) and
``adaln_input``; per-block modulation ``block.adaLN_modulation(adaln_input)`` starts with the image stream's
attention (shift, scale, gate). Text: T5 tokens as the context, the Llama-3.1 layers as ``conditioning_llama3``.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_base
from comfy.ldm.hidream.model import HiDreamImageTransformer2DModel

from ...ditf_core.families.base import call_argument
from ...ditf_core.families.hidream import LLAMA_KEY, HiDreamFamily
from .base import ComfyFamily, HostShape, flat_modulation


class HiDreamComfy(ComfyFamily):
    core = HiDreamFamily()
    supported = "HiDream-I1"
    mechanism = "object_patch"

    def matches(self, base, diffusion) -> bool:
        return isinstance(base, comfy.model_base.HiDream) and isinstance(diffusion, HiDreamImageTransformer2DModel)

    def shape(self, diffusion) -> HostShape:
        structure = SimpleNamespace(double_stream_blocks=list(diffusion.double_stream_blocks),
                                    single_stream_blocks=list(diffusion.single_stream_blocks))
        projections = diffusion.caption_projection
        llama = (max(diffusion.llama_layers) + 1, -1, int(projections[0].linear.in_features))
        return HostShape(structure, int(diffusion.inner_dim), int(projections[-1].linear.in_features),
                         int(diffusion.p_embedder.pooled_embedder.linear_1.in_features), text_streams={LLAMA_KEY: llama})

    def block_path(self, structure, layer) -> str:
        split = self.core.split(structure)
        kind, index = ("single_stream_blocks", layer - split) if layer >= split else ("double_stream_blocks", layer)
        return f"diffusion_model.{kind}.{index}"

    def image_slice(self, structure, layer, text_tokens, image_tokens):
        return slice(0, image_tokens)  # image first (padding and text after it)

    def call_args(self, args, kwargs):
        return {"img": call_argument(args, kwargs, "image_tokens", 0), "vec": call_argument(args, kwargs, "adaln_input", 3)}

    def modulation(self, block, layer, args):
        vec = args["vec"]
        out, width = block.block.adaLN_modulation(vec), vec.shape[-1]  # 12 (double) or 6 (single) chunks of width C
        return flat_modulation(vec.shape[0], out[:, :width], out[:, width : 2 * width], out[:, 2 * width : 3 * width])
