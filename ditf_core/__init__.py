"""DiTF: dense visual-correspondence features from Diffusion Transformers (Flux, SD3/SD3.5).

Framework-agnostic engine: never imports ComfyUI. Public entry points:

* :func:`extract_from_latents` - the recipe on latents (design §2-3);
* :func:`find_massive_channels` - the massive-activation channel rule;
* :class:`DiTFPipeline` - images -> :class:`DiTFeatures` (resize, VAE, ensemble, recipe);
  :func:`load_pipeline` (= ``DiTFPipeline.from_pretrained``) loads one from local files;
* ``python -m ditf_core`` - the command line (see :mod:`ditf_core.cli`).
"""

from .errors import DiTFInputError, UnsupportedModelError
from .features import DiTFeatures
from .families import family_for, supported_families
from .mapping import PixelMapping
from .massive import find_massive_channels
from .pipeline import DiTFPipeline, load_pipeline
from .recipe import apply_recipe, capture_ensemble, extract_from_latents

__version__ = "0.1.0"

__all__ = [
    "DiTFInputError",
    "DiTFPipeline",
    "DiTFeatures",
    "PixelMapping",
    "UnsupportedModelError",
    "apply_recipe",
    "capture_ensemble",
    "extract_from_latents",
    "family_for",
    "find_massive_channels",
    "load_pipeline",
    "supported_families",
]
