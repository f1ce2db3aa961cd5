"""Wall-clock timing shared by the bench scripts (they run as scripts, so this sits beside them on sys.path)."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_of_interleaved(first, second, repeats: int = 5, clock=time.perf_counter) -> tuple[float, float]:
    """Fastest time of each of two functions, run alternately (robust to other load on the machine). ``clock``:
    wall time by default; ``time.process_time`` counts this process's CPU time only (single-threaded work on a
    shared machine)."""
    first(), second()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            start = clock()
            fn()
            times.append(clock() - start)
    return min(a), min(b)
