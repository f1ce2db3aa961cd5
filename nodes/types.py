"""The pack's custom socket types, each defined once."""

from __future__ import annotations

from comfy_api.latest import io

# A ``nodes.model.DiTFModel``: the user's DiT (ComfyUI MODEL + VAE [+ CLIP], or a diffusers folder) ready for
# feature extraction.
DiTFModelType = io.Custom("DITF_MODEL")

# A ``ditf_core.DiTFeatures``: feature maps [B, C, h, w] with their settings and pixel <-> feature mapping.
DiTFeaturesType = io.Custom("DITF_FEATURES")

# A ``nodes.match_value.CorrespondenceMatch``: B matched image pairs (dense both ways with cycle confidence, the
# sparse point matches, the image sizes), from Correspondence Match for Warp / Appearance Transfer.
DiTFMatchType = io.Custom("DITF_MATCH")
