"""The feature store and the dataset runner in one process: each image once, resume, progress counts, inputs."""

from __future__ import annotations

import json

import pytest
from test_eval import SETTINGS, SyntheticExtractor, make_spair, write_image

from ditf_core.commands.extract_dataset import image_paths
from ditf_core.dataset import Ranks, cache_path, device_for_rank, extract_on_ranks, missing_images, ranks_from_env
from ditf_core.dataset.progress import RankProgress
from ditf_core.dataset.store import settings_folder
from ditf_core.eval import evaluate, read_spair
from ditf_core.eval.harness import evaluate_on_ranks, unique_images
from ditf_core.outputs import TEMPORARY_SUFFIX


@pytest.fixture
def images(tmp_path):
    paths = []
    for index in range(5):
        paths.append(tmp_path / "images" / f"im{index}.jpg")
        write_image(paths[-1], (40 + 8 * index, 40), (index, 1))
    return paths


def test_every_image_is_extracted_once_whatever_the_number_of_pairs_it_is_in(tmp_path):
    pairs = read_spair(make_spair(tmp_path / "spair"))
    doubled = pairs + pairs[::-1] + pairs[:1]  # every image in two or three pairs
    assert len(unique_images(doubled)) == 6
    extractor = SyntheticExtractor()
    result = evaluate_on_ranks(doubled, extractor, ranks=Ranks(), cache_dir=tmp_path / "cache", cache_settings=SETTINGS,
                               show_progress=False)
    assert extractor.calls == 6 and result["extraction"]["extracted"] == 6
    assert result["summary"] == evaluate(doubled, SyntheticExtractor())["summary"]
    with pytest.raises(ValueError, match="drop --no-cache"):
        evaluate_on_ranks(pairs, extractor, ranks=Ranks(), cache_dir=None, cache_settings=SETTINGS)


def test_a_rerun_extracts_only_missing_damaged_or_stale_entries(tmp_path, images):
    store = tmp_path / "store"
    spellings = [*images, *(tmp_path / "images" / ".." / "images" / p.name for p in images[:2])]  # same files again
    first = SyntheticExtractor()
    summary = extract_on_ranks(spellings, first, store, SETTINGS, show_progress=False)
    assert first.calls == 5 and (summary["images"], summary["stored_before"], summary["extracted"]) == (5, 0, 5)
    assert missing_images(store, SETTINGS, images) == []

    cache_path(store, SETTINGS, images[0]).unlink()  # lost
    cache_path(store, SETTINGS, images[1]).write_bytes(b"\0" * 20)  # damaged
    write_image(images[2], (33, 40), (2, 1))  # the image changed size since it was stored
    leftover = settings_folder(store, SETTINGS) / f".x.1234abcd{TEMPORARY_SUFFIX}.safetensors"
    leftover.write_bytes(b"")  # what a writer killed mid-file leaves
    again = SyntheticExtractor()
    summary = extract_on_ranks(images, again, store, SETTINGS, show_progress=False)
    assert again.calls == 3 and (summary["stored_before"], summary["extracted"]) == (2, 3)
    assert missing_images(store, SETTINGS, images) == []
    assert summary["ranks"][0]["extracted"] == 3 and summary["ranks"][0]["images_per_second"] > 0


def test_rank_zero_sums_every_ranks_progress_file_of_the_current_run(tmp_path):
    folder = tmp_path / "store" / "digest"
    rank0 = RankProgress(Ranks(0, 2, 0, True), shard=2, total=5, folder=folder, run="now", show=False)
    rank1 = RankProgress(Ranks(1, 2, 1, True), shard=3, total=5, folder=folder, run="now", show=False)
    (folder / "progress" / "rank-2.json").write_text(json.dumps({"run": "before", "extracted": 40}))  # older run
    for _ in range(2):
        rank1.advance()
    rank0.advance()
    assert rank0.total_done == 3 and rank1.total_bar is None
    assert json.loads((folder / "progress" / "rank-1.json").read_text())["extracted"] == 2
    rank0.close(), rank1.close()


def test_torchrun_environment_and_devices():
    assert ranks_from_env({}) == Ranks(0, 1, 0, False)
    ranks = ranks_from_env({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"})
    assert (ranks.rank, ranks.world, ranks.local_rank, ranks.launched, ranks.main) == (2, 3, 0, True, False)
    with pytest.raises(ValueError, match="RANK=3 is not in 0..WORLD_SIZE-1=2"):
        ranks_from_env({"RANK": "3", "WORLD_SIZE": "3"})
    assert device_for_rank("cuda", ranks) == "cuda:0" and device_for_rank("cuda:5", ranks) == "cuda:5"
    assert device_for_rank("cpu", ranks) == "cpu" and device_for_rank("cuda", Ranks()) == "cuda"


def test_images_from_a_folder_or_a_list_file(tmp_path, images):
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert image_paths(tmp_path / "images") == images
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\nimages/im1.jpg\n\n{images[3]}\n")
    assert image_paths(listing) == [tmp_path / "images" / "im1.jpg", images[3]]
    listing.write_text("images/nope.jpg\n")
    with pytest.raises(ValueError, match="lists 1 image that do.* not exist .e.g. .*nope.jpg"):
        image_paths(listing)
    with pytest.raises(ValueError, match="missing does not exist; give a folder of images or a text file"):
        image_paths(tmp_path / "missing")
