"""Progress of a dataset run across ranks: a tqdm bar per rank, the whole run's bar with its ETA on rank 0, and
per-rank throughput for the final JSON.

Ranks share nothing but the store's file system, so each rank writes its count to
``<settings folder>/progress/rank-<r>.json`` (atomically, tagged with the run id) and rank 0 sums the files of the
current run for the total bar. Bars go to stderr; ``show=False`` keeps the counts and the files, without bars.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..outputs import write_text
from .ranks import Ranks


class RankProgress:
    """Counts one rank's share: ``advance()`` after each image, ``refresh_total()`` while waiting, ``stats()``.

    shard: images of this rank; total: images of the run (all ranks); folder: the store's settings folder.
    """

    def __init__(self, ranks: Ranks, *, shard: int, total: int, folder: Path, run: str, show: bool = True):
        self.ranks, self.shard, self.total, self.run = ranks, shard, total, run
        self.file = folder / "progress" / f"rank-{ranks.rank}.json"
        self.folder = self.file.parent
        self.done = 0  # this rank's images so far
        self.total_done = 0  # rank 0: all ranks' images so far
        self.started = time.perf_counter()
        interactive = sys.stderr.isatty()
        options = dict(file=sys.stderr, dynamic_ncols=True, mininterval=0.5 if interactive else 30.0, disable=not show)
        self.total_bar = None
        if ranks.main and ranks.world > 1:
            self.total_bar = tqdm(total=total, desc=f"all {ranks.world} ranks", unit="img", position=0, **options)
        label = f"rank {ranks.rank}" if ranks.world > 1 else "extract"
        position = ranks.rank + 1 if ranks.world > 1 else 0
        self.bar = tqdm(total=shard, desc=label, unit="img", position=position, leave=True, **options)
        self._write()

    def advance(self) -> None:
        self.done += 1
        self.bar.update(1)
        self._write()
        self.refresh_total()

    def refresh_total(self) -> None:
        """Rank 0: move the whole run's bar to the sum of every rank's latest count."""
        if self.total_bar is None:
            return
        done = sum(entry.get("extracted", 0) for entry in self._entries())
        if done > self.total_done:
            self.total_bar.update(done - self.total_done)
            self.total_done = done

    def stats(self) -> dict:
        seconds = time.perf_counter() - self.started
        return {
            "rank": self.ranks.rank,
            "host": socket.gethostname(),
            "images": self.shard,
            "extracted": self.done,
            "seconds": round(seconds, 3),
            "images_per_second": round(self.done / seconds, 4) if seconds > 0 else None,
        }

    def close(self) -> None:
        self.refresh_total()
        self.bar.close()
        if self.total_bar is not None:
            self.total_bar.close()

    def _write(self) -> None:
        entry = {"run": self.run, **self.stats()}
        write_text(self.file, json.dumps(entry) + "\n")

    def _entries(self) -> list[dict]:
        entries = []
        for path in self.folder.glob("rank-*.json"):
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):  # written atomically, but another run may be replacing it
                continue
            if entry.get("run") == self.run:
                entries.append(entry)
        return entries
