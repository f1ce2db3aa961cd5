"""Text conditioning for extraction: encoded once per prompt and cached.

A prompt encoder is any callable ``encoder(prompt) -> (text_embeds [1, L, D], pooled [1, P])``. Three are here:

* :class:`DiffusersPromptEncoder` - the text encoders of a diffusers Flux / SD3 pipeline;
* :class:`ZeroPromptEncoder` - zero conditioning for models loaded without text encoders. This is NOT the
  embedding of the empty prompt (which needs the real encoders); features still work, but differ from the
  paper's, which used real prompts;
* :class:`FixedPromptEncoder` - precomputed embeddings, e.g. from a safetensors file.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .families import family_for
from .wording import first_line

CACHE_SIZE = 16


class CachedPromptEncoder:
    """Base class: memoises ``encode(prompt)`` per prompt (LRU); ``encode_calls`` counts real encodes.
    ``encodes_prompts`` is False for encoders whose result does not depend on the prompt."""

    encodes_prompts = True

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.encode_calls = 0

    def __call__(self, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        self.encode_calls += 1
        with torch.no_grad():
            text_embeds, pooled = self.encode(prompt)
        self._cache[prompt] = (text_embeds.detach(), pooled.detach())
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return self._cache[prompt]

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @property
    def description(self) -> str:
        return type(self).__name__


class ZeroPromptEncoder(CachedPromptEncoder):
    """Zero text tokens and pooled vector of the transformer's expected sizes (any prompt gives the same)."""

    encodes_prompts = False

    def __init__(self, transformer: nn.Module, tokens: int | None = None) -> None:
        super().__init__()
        family = family_for(transformer)
        config = transformer.config
        self.tokens = tokens or family.zero_text_tokens
        self.width = config.joint_attention_dim
        self.pooled_width = config.pooled_projection_dim

    def __call__(self, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        return super().__call__("")  # the prompt cannot change zero conditioning

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, self.tokens, self.width), torch.zeros(1, self.pooled_width)

    @property
    def description(self) -> str:
        return "zero conditioning (no text encoders loaded)"


class FixedPromptEncoder(CachedPromptEncoder):
    """Precomputed conditioning used for every prompt."""

    encodes_prompts = False

    def __init__(self, text_embeds: torch.Tensor, pooled: torch.Tensor) -> None:
        super().__init__()
        if text_embeds.ndim == 2:
            text_embeds = text_embeds.unsqueeze(0)
        if pooled.ndim == 1:
            pooled = pooled.unsqueeze(0)
        self.text_embeds, self.pooled = text_embeds, pooled

    @classmethod
    def from_file(cls, path: str | Path) -> FixedPromptEncoder:
        """Read tensors ``text_embeds`` [1, L, D] and ``pooled`` [1, P] from a safetensors file."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file() or path.suffix != ".safetensors":
            raise ValueError(f"text embeddings must be a .safetensors file with 'text_embeds' and 'pooled': {path}")
        try:
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises its own SafetensorError for a damaged or truncated file
            raise ValueError(f"{path} is not a readable .safetensors file ({first_line(error)})") from None
        missing = {"text_embeds", "pooled"} - tensors.keys()
        if missing:
            raise ValueError(f"{path} lacks {' and '.join(map(repr, sorted(missing)))}; expected tensors 'text_embeds' "
                             "and 'pooled'")
        return cls(tensors["text_embeds"], tensors["pooled"])

    def __call__(self, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        return super().__call__("")

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_embeds, self.pooled

    @property
    def description(self) -> str:
        return "fixed precomputed conditioning"


class DiffusersPromptEncoder(CachedPromptEncoder):
    """Prompts through a diffusers FluxPipeline / StableDiffusion3Pipeline's own text encoders."""

    def __init__(self, pipeline, family_name: str, max_sequence_length: int | None = None) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.family_name = family_name
        self.max_sequence_length = max_sequence_length

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if self.max_sequence_length is None else {"max_sequence_length": self.max_sequence_length}
        device = self.pipeline._execution_device
        if self.family_name == "flux":
            text_embeds, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1, **extra
            )
        else:
            text_embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_3=None,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                **extra,
            )
        return text_embeds, pooled

    @property
    def description(self) -> str:
        return f"{type(self.pipeline).__name__} text encoders"
