"""ComfyUI glue (V3 nodes). Imported only relatively, from the pack's ``__init__.py``."""

from .entrypoint import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
