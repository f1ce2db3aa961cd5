"""Extract the images a feature store lacks, each once, shared among the ranks of a torchrun launch.

Rank 0 lists the missing images (a crash, a kill or Ctrl-C leaves only whole files, so a rerun on any number of ranks
extracts exactly what is missing) and hands every rank every world-th of them; each rank writes its own files into
the store; all ranks meet at a barrier; rank 0 reports the run (the final JSON). A single process is rank 0 of 1.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from .progress import RankProgress
from .ranks import Ranks, broadcast, gather, wait_for_all
from .store import Extractor, extract_into, missing_images, settings_folder


def extract_on_ranks(
    images: Iterable[str | Path],
    extractor: Extractor,
    store: str | Path,
    settings: dict,
    *,
    ranks: Ranks | None = None,
    show_progress: bool = True,
) -> dict:
    """Store the features of every image of ``images`` that ``store`` lacks; returns the run's summary (the same
    dict on every rank).

    images: image files (duplicates, also under other spellings of one path, are extracted once); extractor:
    ``PIL.Image -> DiTFeatures`` of one image; settings: what keys the store folder (see :mod:`.store`).
    Summary: world, images (unique), stored_before, extracted, seconds, images_per_second, and per rank: rank, host,
    images (its share), extracted, seconds, images_per_second.
    """
    ranks = ranks or Ranks()
    started = time.perf_counter()
    unique = unique_paths(images)
    plan = None
    if ranks.main:
        plan = {"missing": [str(path) for path in missing_images(store, settings, unique)], "run": uuid.uuid4().hex}
    plan = broadcast(plan, ranks)
    share = plan["missing"][ranks.rank :: ranks.world]
    progress = RankProgress(ranks, shard=len(share), total=len(plan["missing"]),
                            folder=settings_folder(store, settings), run=plan["run"], show=show_progress)
    try:
        for image in share:
            extract_into(store, settings, Path(image), extractor)
            progress.advance()
        wait_for_all(ranks, progress.refresh_total)
        per_rank = gather(progress.stats(), ranks)
    finally:
        progress.close()
    summary = None
    if ranks.main:
        seconds = time.perf_counter() - started
        extracted = sum(entry["extracted"] for entry in per_rank)
        summary = {
            "world": ranks.world,
            "images": len(unique),
            "stored_before": len(unique) - len(plan["missing"]),
            "extracted": extracted,
            "seconds": round(seconds, 3),
            "images_per_second": round(extracted / seconds, 4) if seconds > 0 else None,
            "ranks": per_rank,
        }
    return broadcast(summary, ranks)


def unique_paths(images: Iterable[str | Path]) -> list[Path]:
    """The images in first-seen order, each file once (two spellings of one path count once)."""
    seen, unique = set(), []
    for image in images:
        resolved = Path(image).resolve()
        if resolved not in seen:
            seen.add(resolved)
            unique.append(Path(image))
    return unique
