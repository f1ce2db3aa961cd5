"""Started by tests/test_distributed.py under torchrun (not a test module): extract a folder of synthetic images into
a feature store with the tests' synthetic extractor, the way extract-dataset does with a model.

--crash-after N: rank 1 kills itself (SIGKILL, no clean-up at all) when asked for its (N + 1)-th image, i.e. after
storing N; torchrun then stops the other ranks wherever they are.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from test_eval import SETTINGS, SyntheticExtractor

from ditf_core.dataset import extract_on_ranks, process_group, ranks_from_env


class CrashingExtractor(SyntheticExtractor):
    def __init__(self, crash_after: int):
        super().__init__()
        self.crash_after = crash_after

    def __call__(self, image):
        if self.calls == self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(image)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", type=Path)
    parser.add_argument("store", type=Path)
    parser.add_argument("--crash-after", type=int)
    args = parser.parse_args()
    ranks = ranks_from_env()
    crash = args.crash_after is not None and ranks.rank == 1
    extractor = CrashingExtractor(args.crash_after) if crash else SyntheticExtractor()
    with process_group(ranks, "cpu"):
        summary = extract_on_ranks(sorted(args.images.glob("*.jpg")), extractor, args.store, SETTINGS, ranks=ranks,
                                   show_progress=False)
    assert summary["ranks"][ranks.rank]["extracted"] == extractor.calls  # the JSON counts extractor calls


if __name__ == "__main__":
    main()
