"""torchrun launches (gloo, CPU): the same PCK and cache files as one process, resumable after a kill or Ctrl-C,
idle ranks. Each test starts torchrun once (a few seconds of start-up per rank), on a handful of small images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from test_eval import SETTINGS, SyntheticExtractor, make_spair, write_image

from ditf_core.cli import main as cli_main
from ditf_core.dataset import extract_on_ranks
from ditf_core.eval.__main__ import main as eval_main
from ditf_core.outputs import TEMPORARY_SUFFIX

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--demo", "--resolution", "64", "--ensemble", "2"]


def torchrun(ranks: int, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node ranks`` of this checkout's code (not an installed copy)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), *command]
    done = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def stored(store: Path) -> dict[str, tuple]:
    """Every feature file of a store: name -> (tensor, metadata, inode + mtime)."""
    files = {}
    for path in sorted(store.rglob("*.safetensors")):
        if TEMPORARY_SUFFIX in path.name:  # a rank killed while writing leaves its temporary file: never read
            continue
        with safe_open(str(path), framework="pt") as handle:
            files[path.relative_to(store).as_posix()] = (handle.get_tensor("features"), handle.metadata(),
                                                        (path.stat().st_ino, path.stat().st_mtime_ns))
    return files


def assert_same_features(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs) and ours
    for name in ours:
        assert torch.equal(ours[name][0], theirs[name][0]) and ours[name][1] == theirs[name][1], name


def test_two_ranks_give_the_single_process_pck_and_cache(tmp_path):
    root = make_spair(tmp_path / "spair")
    pairs = root / "PairAnnotation" / "test"
    first = sorted(pairs.glob("*.json"))[0]
    (pairs / "000009-again.json").write_text(first.read_text())  # a pair of images already used: 4 pairs, 6 images
    options = [*DEMO, "--output"]
    assert eval_main(["spair", str(root), "--cache", str(tmp_path / "one"), *options, str(tmp_path / "one.json"),
                      "--predictions", "--quiet"]) == 0
    torchrun(2, "-m", "ditf_core.eval", "spair", str(root), "--cache", str(tmp_path / "two"), *options,
             str(tmp_path / "two.json"), "--predictions", "--quiet")
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert two["summary"] == one["summary"] and two["pairs"] == one["pairs"] and len(two["pairs"]) == 4
    assert all(len(record["predicted"]) == record["points"] for record in two["pairs"])
    assert_same_features(stored(tmp_path / "two"), stored(tmp_path / "one"))
    run = two["extraction"]
    assert (run["world"], run["images"], run["extracted"]) == (2, 6, 6)  # each image once, not once per pair
    assert [rank["extracted"] for rank in run["ranks"]] == [3, 3]
    assert one["features"] == two["features"] == {"extracted": 6, "cached": 0}


def test_a_killed_run_resumes_extracting_only_what_is_missing(tmp_path):
    images = tmp_path / "images"
    for index in range(8):
        write_image(images / f"im{index}.jpg", (48 + 8 * index, 40), (index, 2 * index))
    store = tmp_path / "store"
    crashed = torchrun(2, "tests/distributed_worker.py", str(images), str(store), "--crash-after", "1", check=False)
    assert crashed.returncode != 0
    before = stored(store)
    assert 1 <= len(before) <= 5  # rank 1 stored one of its 4 images and died; rank 0 was stopped wherever it was
    extractor = SyntheticExtractor()  # the rerun, here on one rank
    rerun = extract_on_ranks(sorted(images.glob("*.jpg")), extractor, store, SETTINGS, show_progress=False)
    after = stored(store)
    assert len(after) == 8
    assert extractor.calls == rerun["extracted"] == 8 - len(before) and rerun["stored_before"] == len(before)
    assert all(after[name][2] == before[name][2] for name in before)  # the first run's files were left alone


def test_after_ctrl_c_three_ranks_extract_the_two_missing_images(tmp_path, monkeypatch):
    """extract-dataset interrupted by Ctrl-C after two images, resumed by torchrun on 3 ranks: one rank is idle."""
    images = tmp_path / "images"
    for index, suffix in enumerate((".jpg", ".png", ".jpg", ".png")):
        write_image(images / f"{index}{suffix}", (64 - 8 * index, 48 + 8 * index), (index, 1))
    assert cli_main(["extract-dataset", str(images), "--out", str(tmp_path / "whole"), *DEMO, "--quiet"]) == 0

    from ditf_core.pipeline import DiTFPipeline

    extract, calls = DiTFPipeline.extract, []

    def interrupted(self, image, **options):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return extract(self, image, **options)

    monkeypatch.setattr(DiTFPipeline, "extract", interrupted)
    assert cli_main(["extract-dataset", str(images), "--out", str(tmp_path / "resumed"), *DEMO, "--quiet"]) == 130
    before = stored(tmp_path / "resumed")
    assert len(before) == 2 and not list((tmp_path / "resumed").rglob(f"*{TEMPORARY_SUFFIX}*"))

    torchrun(3, "-m", "ditf_core", "extract-dataset", str(images), "--out", str(tmp_path / "resumed"), *DEMO,
             "--summary", str(tmp_path / "summary.json"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["stored_before"], summary["extracted"]) == (2, 2)
    assert [rank["images"] for rank in summary["ranks"]] == [1, 1, 0]  # 2 missing images, 3 ranks
    after = stored(tmp_path / "resumed")
    assert_same_features(after, stored(tmp_path / "whole"))
    assert all(after[name][2] == before[name][2] for name in before)
    index = json.loads(Path(summary["index"]).read_text())
    assert sorted(Path(image).name for image in index) == ["0.jpg", "1.png", "2.jpg", "3.png"]
