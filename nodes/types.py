"""The pack's custom socket types, each defined once (later issues add DITF_MATCH here)."""

from __future__ import annotations

from comfy_api.latest import io

# A ``nodes.model.DiTFModel``: the user's DiT (ComfyUI MODEL + VAE [+ CLIP], or a diffusers folder) ready for
# feature extraction.
DiTFModelType = io.Custom("DITF_MODEL")

# A ``ditf_core.DiTFeatures``: feature maps [B, C, h, w] with their settings and pixel <-> feature mapping.
DiTFeaturesType = io.Custom("DITF_FEATURES")
