"""Massive-Activation Inspector: see, measure and explain massive activations in a loaded DiT.

Host-agnostic analysis of captured block inputs (:mod:`.analysis`), the per-layer sweep and its per-model cache
(:mod:`.sweep`), pictures (:mod:`.plots`), the JSON report (:mod:`.report`), and the one-call entry points
(:mod:`.inspector`):

* :func:`inspect_captures` - captures ``{layer: EnsembleCapture}`` from any host (+ images) -> :class:`Inspection`;
* :func:`inspect_pipeline` - a :class:`~ditf_core.DiTFPipeline` + images -> :class:`Inspection` (one pass);
* :func:`massive_channels_for` - the channels a cached sweep found at a block, for ``discard="auto"``.
"""

from .analysis import (
    MASSIVE_RATIO,
    TABLE1_RANKS,
    WEAK_RATIO,
    ChannelStats,
    adaln_comparison,
    channel_stats,
    gate_alignment,
    massive_summary,
    table1,
)
from .inspector import Inspection, inspect_captures, inspect_pipeline, inspect_run
from .report import REPORT_VERSION, channels_text, summary_text
from .sweep import (
    DEFAULT_CACHE,
    LayerSweep,
    SweepCache,
    SweepKey,
    massive_channels_for,
    model_key,
    sweep_captures,
    sweep_key,
    sweep_pipeline,
)

__all__ = [
    "DEFAULT_CACHE",
    "MASSIVE_RATIO",
    "REPORT_VERSION",
    "TABLE1_RANKS",
    "WEAK_RATIO",
    "ChannelStats",
    "Inspection",
    "LayerSweep",
    "SweepCache",
    "SweepKey",
    "adaln_comparison",
    "channel_stats",
    "channels_text",
    "gate_alignment",
    "inspect_captures",
    "inspect_pipeline",
    "inspect_run",
    "massive_channels_for",
    "massive_summary",
    "model_key",
    "summary_text",
    "sweep_captures",
    "sweep_key",
    "sweep_pipeline",
    "table1",
]
