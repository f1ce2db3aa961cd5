"""The ranks of a torchrun launch and the few collectives a dataset run needs (gloo on CPU, nccl on CUDA).

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) a run is a single process: rank 0 of 1, no process
group, and every collective here returns at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import DiTFInputError

# Ranks that finish their share early wait for the slowest one at a barrier; on a cluster that can take hours.
# A crashed rank does not leave the others waiting that long: torchrun stops every rank when one fails.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Ranks:
    """rank of world; local_rank: the rank on this machine (its GPU index); launched: started by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one that reports and scores."""
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torchrun describes in the environment; a single process when its variables are absent."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return Ranks()
    rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in 0..WORLD_SIZE-1={world - 1}; start the run with torchrun")
    return Ranks(rank=rank, world=world, local_rank=int(environ.get("LOCAL_RANK", rank)), launched=True)


def single_process_only(command: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a torchrun launch of more than one rank for ``command``, which runs in one process (every rank would
    do all of it and write the same files)."""
    ranks = ranks_from_env(environ)
    if ranks.world > 1:
        raise DiTFInputError(f"{command} runs in one process, not under torchrun ({ranks.world} ranks here); start it "
                         "with python -m. torchrun runs the PCK benchmarks (spair, pfpascal, ap10k) and "
                         "extract-dataset")


def device_for_rank(device: str | None, ranks: Ranks) -> str | None:
    """The device of this rank: under torchrun with CUDA each rank takes GPU LOCAL_RANK ("cuda" or no --device);
    a device with an index is used as given; otherwise ``device`` unchanged."""
    if not ranks.launched:
        return device
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return f"cuda:{ranks.local_rank}"
    return device


@contextmanager
def process_group(ranks: Ranks, device: torch.device | str) -> Iterator[None]:
    """The torch.distributed process group of the run (nccl for a CUDA device, else gloo), when there is more
    than one rank; destroyed on the way out."""
    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    device = torch.device(device)
    if device.type == "cuda":  # nccl's object collectives and barriers use this rank's GPU
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=BARRIER_TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast(value, ranks: Ranks):
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, ranks: Ranks) -> list | None:
    """Every rank's ``value``, in rank order, on rank 0; None on the other ranks."""
    if ranks.world == 1:
        return [value]
    values = [None] * ranks.world if ranks.main else None
    dist.gather_object(value, values, dst=0)
    return values


def wait_for_all(ranks: Ranks, while_waiting: Callable[[], None] | None = None, interval: float = 0.5) -> None:
    """A barrier; ``while_waiting()`` is called every ``interval`` seconds until every rank has arrived (rank 0
    uses it to keep the whole run's progress bar moving)."""
    if ranks.world == 1:
        return
    pending = dist.barrier(async_op=True)
    while not pending.is_completed():
        if while_waiting is not None:
            while_waiting()
        time.sleep(interval)
    pending.wait()
