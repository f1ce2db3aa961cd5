"""Exception types: small, catchable, and each a ``ValueError`` so callers can treat them as bad input."""

from __future__ import annotations


class DiTFInputError(ValueError):
    """An input (image, layer, timestep, path, channel list...) is not usable; the message says how to fix it."""


class UnsupportedModelError(DiTFInputError):
    """The model is not a Diffusion Transformer family this package supports."""
