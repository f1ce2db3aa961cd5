"""Massive activations at work: transport, disruption, MA masks and Detail Guidance (design.md §7).

Host-free operations on image-token hidden states ``[B, N, C]`` (:mod:`.ops`, :mod:`.mask`), the per-block patch
specs every host applies (:mod:`.patches`), the transport source that follows any sampler (:mod:`.source`), the
shared settings and defaults (:mod:`.settings`), and a context manager that applies the patches to a diffusers
transformer inside a normal pipeline call (:mod:`.diffusers_hooks`).
"""

from .mask import kmeans_foreground, ma_mask, min_max
from .ops import (
    channel_mask,
    channel_statistic,
    control_channels,
    detail_guidance,
    disrupt,
    joint_mask,
    massive_channels,
    transport,
)
from .patches import Disruption, MassiveZeroing, Transport, mask_to_grid
from .settings import DEFAULT_TOP_K, MASK_MODES, check_window, parse_blocks
from .source import NoisedReference, SourceTrajectory, flow_noise_scaling

__all__ = [
    "DEFAULT_TOP_K",
    "Disruption",
    "MASK_MODES",
    "MassiveZeroing",
    "NoisedReference",
    "SourceTrajectory",
    "Transport",
    "channel_mask",
    "channel_statistic",
    "check_window",
    "control_channels",
    "detail_guidance",
    "disrupt",
    "flow_noise_scaling",
    "joint_mask",
    "kmeans_foreground",
    "ma_mask",
    "mask_to_grid",
    "massive_channels",
    "min_max",
    "parse_blocks",
    "transport",
]
