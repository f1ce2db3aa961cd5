"""Dataset-size runs: a content-addressed feature store, sharding over the ranks of a torchrun launch, progress.

* :mod:`.store` - one safetensors file per image and settings, written atomically (the evaluation cache too);
* :mod:`.ranks` - torchrun's ranks, the process group (gloo on CPU, nccl on CUDA) and the collectives used;
* :mod:`.runner` - :func:`extract_on_ranks`: every missing image once, shared among the ranks, resumable;
* :mod:`.progress` - per-rank bars, the whole run's bar with an ETA, per-rank throughput;

A single process (no torchrun) is rank 0 of 1: no process group, the same files. The command line's
``extract-dataset`` (:mod:`ditf_core.commands.extract_dataset`) and the PCK benchmarks of ``eval`` run on it.
"""

from .ranks import Ranks, device_for_rank, process_group, ranks_from_env, single_process_only
from .runner import extract_on_ranks, unique_paths
from .store import cache_path, extraction_settings, missing_images, read_cached, settings_digest, settings_folder

__all__ = [
    "Ranks",
    "cache_path",
    "device_for_rank",
    "extract_on_ranks",
    "extraction_settings",
    "missing_images",
    "process_group",
    "ranks_from_env",
    "read_cached",
    "settings_digest",
    "settings_folder",
    "single_process_only",
    "unique_paths",
]
