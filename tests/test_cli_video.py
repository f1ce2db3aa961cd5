"""The video commands as a user meets them: ``propagate`` / ``track`` and ``eval davis`` / ``eval tapvid`` write
what the README lists (atomically, into an output folder with its marker), resume and rerun honestly, stop cleanly
on Ctrl-C, and refuse every mistake with one ``error:`` line BEFORE the model loads."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from cli_helpers import forbid_model_loading, refused
from PIL import Image
from test_cli import files_in, readme_files
from test_video_eval import DAVIS_CLIP, tapvid_dataset, write_davis
from video_clips import Clip

from ditf_core import DiTFPipeline
from ditf_core.cli import INTERRUPTED, main
from ditf_core.eval.__main__ import main as eval_main
from ditf_core.images import tensor_to_pil
from ditf_core.outputs import MARKER, is_complete
from ditf_core.video import label_map_image

CLIP = Clip(frames=3)  # 64 x 48
FAST = ["--demo", "--resolution", "64"]


@pytest.fixture
def clip(tmp_path):
    """A folder of 3 PNG frames, a grey first-frame mask of the moving square, and an output folder."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(CLIP.frames):
        tensor_to_pil(CLIP.frame(t)).save(frames / f"{t:03d}.png")
    mask = tmp_path / "mask.png"
    Image.fromarray((CLIP.mask(0).numpy() * 255).astype(np.uint8)).save(mask)
    return frames, mask


def cli(argv) -> int:
    return main([str(a) for a in argv])


def eval_cli(argv) -> int:
    """``python -m ditf_core.eval ...``"""
    return eval_main([str(a) for a in argv])


def frame_files(command: str) -> set[str]:
    return {name.replace("<frame>", f"{t:03d}") for name in readme_files(command) for t in range(CLIP.frames)}


class ExtractCalls:
    """Counts (and can interrupt) DiTFPipeline.extract."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None) -> None:
        self.count, self.interrupt_at, self.real = 0, interrupt_at, DiTFPipeline.extract
        monkeypatch.setattr(DiTFPipeline, "extract", lambda pipe, *a, **k: self(pipe, *a, **k))

    def __call__(self, pipeline, *args, **kwargs):
        self.count += 1
        if self.count == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real(pipeline, *args, **kwargs)


# --- propagate and track ---------------------------------------------------------------------------------------------
def test_propagate_writes_the_masks_and_overlays_the_readme_lists(tmp_path, clip, capsys):
    frames, mask = clip
    out = tmp_path / "prop"
    assert cli(["propagate", frames, "--mask", mask, *FAST, "--out", out]) == 0
    assert set(files_in(out)) == frame_files("propagate") and is_complete(out)
    assert np.array_equal(np.array(Image.open(out / "masks" / "000.png")), CLIP.mask(0).numpy())
    assert Image.open(out / "masks" / "002.png").mode == "P"  # indexed, DAVIS palette
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("3 frames in ")  # the summary comes last


def test_track_writes_the_tracks_and_overlays_the_readme_lists(tmp_path, clip):
    frames, _ = clip
    out = tmp_path / "track"
    points = tmp_path / "points.json"
    points.write_text('[{"x": 10, "y": 12}, {"x": 40, "y": 30}]')
    assert cli(["track", frames, "--points", points, *FAST, "--out", out]) == 0
    assert set(files_in(out)) == frame_files("track") and is_complete(out)
    tracks = json.loads((out / "tracks.json").read_text())
    assert [step["frame"] for step in tracks] == [0, 1, 2]
    assert tracks[0]["points"][0] == {"x": 10, "y": 12, "visible": True, "score": 1.0}


def test_ctrl_c_mid_clip_leaves_the_previous_outputs(tmp_path, clip, capsys, monkeypatch):
    frames, mask = clip
    out = tmp_path / "prop"
    assert cli(["propagate", frames, "--mask", mask, *FAST, "--out", out]) == 0
    before = files_in(out)
    capsys.readouterr()
    ExtractCalls(monkeypatch, interrupt_at=2)  # the first frame's outputs are staged by then
    assert cli(["propagate", frames, "--mask", mask, *FAST, "--out", out, "--seed", "1"]) == 130
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.strip() and not line.startswith("  ")] == [INTERRUPTED]
    assert files_in(out) == before


def test_keyframes_restart_the_propagation(tmp_path, clip):
    frames, mask = clip
    other = tmp_path / "other.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((0, 40), (0, 56)))).save(other)  # a square at (0, 0)
    out = tmp_path / "prop"
    assert cli(["propagate", frames, "--mask", mask, "--keyframe", f"2:{other}", *FAST, "--out", out]) == 0
    assert np.array_equal(np.array(Image.open(out / "masks" / "002.png")) > 0, np.array(Image.open(other)) > 0)


# --- eval davis / tapvid -------------------------------------------------------------------------------------------
def test_eval_davis_writes_results_resumes_from_the_cache_and_recomputes_new_settings(tmp_path, capsys, monkeypatch):
    write_davis(tmp_path / "DAVIS")
    out, cache = tmp_path / "davis", tmp_path / "cache"
    argv = ["davis", tmp_path / "DAVIS", *FAST, "--quiet", "--output", out, "--cache", cache, "--save-masks"]
    calls = ExtractCalls(monkeypatch)
    assert eval_cli(argv) == 0
    assert "J&F-Mean" in capsys.readouterr().out
    listed = {name.replace("<sequence>", "squares").replace("<frame>", f"{t:05d}")
              for name in readme_files("eval davis") for t in range(DAVIS_CLIP.frames)}
    assert set(files_in(out)) == listed and is_complete(out)
    saved = json.loads((out / "results.json").read_text())
    # the video defaults, and no prompt: the demo DiT has no text encoders (zero conditioning is what was used)
    assert saved["benchmark"] == "davis" and saved["settings"]["extract"]["t"] == 0.09
    assert saved["settings"]["extract"]["prompt"] == "" and saved["settings"]["propagation"]["context"] == 7
    first = calls.count
    assert first == DAVIS_CLIP.frames
    assert cli(["eval", *argv]) == 0  # the same through `python -m ditf_core eval`: all from the cache
    assert calls.count == first and json.loads((out / "results.json").read_text())["summary"] == saved["summary"]
    assert eval_cli([*argv, "--context", "2"]) == 0  # other settings: computed again, not reused
    assert calls.count == 2 * first
    assert eval_cli([*argv[:-3], "--no-cache", "--output", tmp_path / "plain"]) == 0
    assert set(files_in(tmp_path / "plain")) == {"results.json", "squares.json", MARKER}


def test_eval_tapvid_writes_results(tmp_path, capsys):
    path = tmp_path / "tapvid_davis.pkl"
    squares = tapvid_dataset()["squares"]  # its first 4 frames: the command's plumbing, not the tracker, is tested
    path.write_bytes(pickle.dumps({"squares": {"video": squares["video"][:4], "points": squares["points"][:, :4],
                                               "occluded": squares["occluded"][:, :4]}}))
    out = tmp_path / "tapvid"
    assert cli(["eval", "tapvid", str(path), *FAST, "--quiet", "--output", str(out)]) == 0
    assert "AJ" in capsys.readouterr().out
    assert set(files_in(out)) == set(readme_files("eval tapvid"))
    assert json.loads((out / "results.json").read_text())["settings"]["tracking"]["threshold"] == 0.6
    npz = tmp_path / "tapvid_davis.npz"
    assert cli(["eval", "tapvid", str(path), "--save-npz", str(npz)]) == 0 and npz.is_file()


# --- mistakes: one error line, before the model loads ----------------------------------------------------------------
@pytest.fixture
def no_model_load(monkeypatch):
    forbid_model_loading(monkeypatch)


def test_frames_mistakes(tmp_path, clip, capsys, no_model_load):
    frames, mask = clip
    refused(["propagate", tmp_path / "nowhere", "--mask", mask, *FAST], capsys, "FRAMES", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(["track", empty, "--points", "[[1, 1]]", *FAST], capsys, "no image files")
    single = tmp_path / "single"
    single.mkdir()
    (single / "000.png").write_bytes((frames / "000.png").read_bytes())
    refused(["propagate", single, "--mask", mask, *FAST], capsys, "holds 1 frame; a clip needs at least 2")
    (frames / "001.png").write_text("not a picture")
    refused(["propagate", frames, "--mask", mask, *FAST], capsys, "001.png is not an image PIL can read")
    Image.new("RGB", (32, 48)).save(frames / "001.png")
    refused(["propagate", frames, "--mask", mask, *FAST], capsys, "001.png is 32x48 but the first frame is 64x48")
    Image.new("RGB", (64, 48)).save(frames / "001.png")
    Image.new("RGB", (64, 48)).save(frames / "001.jpg")
    refused(["propagate", frames, "--mask", mask, *FAST], capsys, "would both write 001.png")


def test_mask_and_keyframe_mistakes(tmp_path, clip, capsys, no_model_load):
    frames, mask = clip
    refused(["propagate", frames, "--mask", tmp_path / "none.png", *FAST], capsys, "--mask: no image file at")
    small = tmp_path / "small.png"
    Image.new("L", (32, 24), 255).save(small)
    refused(["propagate", frames, "--mask", small, *FAST], capsys, "--mask", "is 32x24 but the frames are 64x48")
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 48)).save(blank)
    refused(["propagate", frames, "--mask", blank, *FAST], capsys, "is empty: it marks no object")
    for spec, *expected in (("x:m.png", "--keyframe takes N:MASK"), (f"0:{mask}", "frame 0 is not a later frame"),
                            (f"3:{mask}", "frame 3 is not a later frame of the clip (1..2"),
                            (f"1:{blank}", "--keyframe 1", "marks no object")):
        refused(["propagate", frames, "--mask", mask, "--keyframe", spec, *FAST], capsys, *expected)


def test_points_mistakes(tmp_path, clip, capsys, no_model_load):
    frames, _ = clip
    refused(["track", frames, "--points", '[{"x": 100, "y": 12}]', *FAST], capsys,
            "--points[0] = (100, 12) lies outside the 64x48")
    refused(["track", frames, "--points", "[{x: 1}", *FAST], capsys, "--points: points are not valid JSON")
    refused(["track", frames, "--points", "[]", *FAST], capsys, "--points is empty")
    refused(["track", frames, "--points", tmp_path / "p.json", *FAST], capsys, "--points", "no such file")


@pytest.mark.parametrize("options, expected", [
    (["--context", "-1"], ["--context: context must be an integer of at least 0"]),
    (["--top-k", "0"], ["--top-k: top_k must be an integer of at least 1"]),
    (["--temperature", "0"], ["--temperature: temperature must be a finite number above 0"]),
    (["--layer", "99"], ["--layer: layer 99 is out of range", "-1 for the video default (3)"]),
    (["--resolution", "8"], ["--resolution must be between 16 and 4096"]),
    (["--micro-batch", "0"], ["--micro-batch must be at least 1"]),
    (["--discard", "x"], ["--discard:"]),
    (["--prompt", "a cat"], ["--prompt needs the model's text encoders"]),
])
def test_propagation_and_extraction_options(clip, capsys, no_model_load, options, expected):
    frames, mask = clip
    refused(["propagate", frames, "--mask", mask, *FAST, *options], capsys, *expected)


def test_tracking_options_and_out(tmp_path, clip, capsys, no_model_load):
    frames, _ = clip
    points = ["--points", "[[10, 12]]"]
    refused(["track", frames, *points, *FAST, "--threshold", "2"], capsys, "--threshold: threshold must be a number")
    refused(["track", frames, *points, *FAST, "--search-radius", "-1"], capsys, "--search-radius:")
    refused(["track", frames, *points], capsys, "no model: give --model PATH")
    target = tmp_path / "file.txt"
    target.write_text("keep")
    refused(["track", frames, *points, *FAST, "--out", target], capsys, "--out", "is a file, not a folder")


def test_eval_video_mistakes(tmp_path, capsys, no_model_load):
    refused(["eval", "davis", tmp_path, *FAST], capsys, "ImageSets/2017/val.txt", "ROOT must be the DAVIS folder")
    write_davis(tmp_path / "DAVIS")
    davis = ["eval", "davis", tmp_path / "DAVIS", *FAST]
    refused([*davis, "--sequence", "cows"], capsys, "--sequence cows: not in")
    cache = tmp_path / "cache"
    cache.write_text("")
    refused([*davis, "--cache", cache], capsys, "--cache", "is a file, not a folder")
    refused([*davis, "--top-k", "0"], capsys, "--top-k")
    label_map_image(DAVIS_CLIP.mask(0) * 0).save(tmp_path / "DAVIS" / "Annotations" / "480p" / "squares" / "00000.png")
    refused(davis, capsys, "sequence squares: the first annotation", "marks no object")

    refused(["eval", "tapvid", tmp_path / "none.pkl", *FAST], capsys, "no TAP-Vid file at")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x80\x04garbage")
    refused(["eval", "tapvid", garbage, *FAST], capsys, "is not a readable TAP-Vid file")
    path = tmp_path / "tapvid.pkl"
    path.write_bytes(pickle.dumps(tapvid_dataset()))
    refused(["eval", "tapvid", path, *FAST, "--video", "cows"], capsys, "--video cows: not in")
    refused(["eval", "tapvid", path, "--save-npz", tmp_path / "x.zip"], capsys, "--save-npz", "ending in .npz")
    refused(["eval", "tapvid", path, "--save-npz", tmp_path], capsys, "--save-npz", "is a folder")
    refused(["eval", "tapvid", path, *FAST, "--threshold", "-1"], capsys, "--threshold")
