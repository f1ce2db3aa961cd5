"""Bounded work on a live ``main.py --cpu`` server (issue 10, section 3): values a shared workflow can carry are
refused before any work with a message that names the input and the bound (the server carries on and the user's
MODEL samples as before), and Cancel stops a capture pass inside the pass and a long exact match between chunks.
The server fixture's models/diffusers holds a link loop (``loop -> .``): start-up finishing at all is its test."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from live_server import INPUT_IMAGES, messages, succeeded
from test_server import error_message, flux_graph, flux_sampling_graph, sampled_pixels, sampling_graph, sd35_graph

pytestmark = pytest.mark.comfyui

MAX_POINTS = 1024  # ditf_core.matching.points.MAX_POINTS (the pack is not importable here)


def timed_run(server, graph) -> tuple[dict, float]:
    started = time.monotonic()
    entry = server.run(graph)
    return entry, time.monotonic() - started


def match_graph(files, points: str, mode: str = "fast", size: tuple[int, int] | None = None):
    """Tiny Flux: both input images (optionally upscaled to ``size``), Extract at 128 px each, Correspondence Match."""
    graph = flux_graph(files, extract={"resolution": 128, "ensemble": 1})
    graph["img2"] = {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[1]}}
    images = {"a": ["img1", 0], "b": ["img2", 0]}
    if size is not None:
        for side, source in list(images.items()):
            graph[f"big_{side}"] = {"class_type": "ImageScale", "inputs": {
                "image": source, "upscale_method": "bilinear", "width": size[0], "height": size[1], "crop": "disabled"}}
            images[side] = [f"big_{side}", 0]
    graph["extract"]["inputs"]["image"] = images["a"]
    graph["extract_b"] = {"class_type": "DiTFExtractFeatures",
                          "inputs": {**graph["extract"]["inputs"], "image": images["b"]}}
    graph["match"] = {"class_type": "DiTFCorrespondenceMatch", "inputs": {
        "source": ["extract", 0], "target": ["extract_b", 0], "source_image": images["a"], "target_image": images["b"],
        "points": points, "mode": mode, "max_points": 8, "cycle_tolerance": 2.0}}
    return graph


def grid_points(count: int, width: int = 384, height: int = 288) -> str:
    side = int(count**0.5) + 1
    points = [{"x": (i % side) * (width - 1) / side, "y": (i // side) * (height - 1) / side} for i in range(count)]
    return json.dumps(points)


# --- refused before any work; the server carries on and the MODEL is untouched ----------------------------------------
def test_values_past_the_bounds_are_refused_naming_the_input_and_the_bound(server):
    files = server.files
    before = server.run(flux_sampling_graph(files, 1))
    assert succeeded(before), error_message(before)
    sd35_before = server.run(sampling_graph(files, 1))
    assert succeeded(sd35_before), error_message(sd35_before)

    # points: refused when queued (the text is checked by the node's validate_inputs)
    status, response = server.queue(match_graph(files, grid_points(MAX_POINTS + 1)))
    refused = str(response["node_errors"]["match"])
    assert "points holds 1,025 points, more than the 1,024 one match takes" in refused and "split them" in refused
    if status == 200:  # ComfyUI still runs the output nodes that validated (the Extract previews), never the match
        assert "match" not in server.wait(response["prompt_id"])["outputs"]

    # resolution: Flux's token budget, SD3's position embeddings - both before any VAE or transformer work
    too_big, seconds = timed_run(server, flux_graph(files, extract={"resolution": 4096, "seed": 21}))
    message = error_message(too_big)
    assert not succeeded(too_big) and "resolution 4096 gives 256x192 = 49,152 tokens, more than the 16,384" in message
    assert "the largest resolution for this 384x288 image is 2352" in message
    print(f"Flux resolution 4096 refused after {seconds:.2f} s (queue to history)")
    sd35_big = server.run(sd35_graph(files, extract={"resolution": 1040, "seed": 21}))
    assert "resolution 1040 gives 65 tokens along one side" in error_message(sd35_big)
    assert "position embeddings for at most 64x64 tokens (1024 px); the largest resolution" in error_message(sd35_big)

    # memory: a sweep of 4096 images at 16,384 tokens keeps ~103 GB of sums, more than this machine has free
    graph = flux_graph(files)
    del graph["extract"]
    graph["many"] = {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 4096, "color": 0}}
    graph["inspect"] = {"class_type": "DiTFInspector", "inputs": {
        "ditf_model": ["load", 0], "image": ["many", 0], "layers": "", "sweep": True, "t": 0.26, "ensemble": 1,
        "seed": 0, "resolution": 2048, "ratio": 100.0}}
    needed = 4096 * 128 * 128 * 64 * 6 * 4
    free = _free_ram()
    assert needed > 2 * free, f"this machine has {free / 1e9:.0f} GB free: the refusal needs a bigger batch"
    too_much, seconds = timed_run(server, graph)
    message = error_message(too_much)
    assert "this capture needs about" in message and "is free in RAM" in message, message
    assert f"4096 image(s) x 16,384 tokens x 64 channels x 6 block(s) kept x 4 bytes = {needed / 1e9:.2f} GB" in message
    assert "use fewer images or a lower resolution, or keep fewer blocks (fewer layers; sweep off" in message
    print(f"Inspector sweep of 4096 images at 2048 px refused after {seconds:.2f} s")

    # the server carries on, and both MODELs sample exactly as before
    assert succeeded(server.run(flux_graph(files, extract={"seed": 22})))
    after = server.run(flux_sampling_graph(files, 2))
    assert succeeded(after), error_message(after)
    assert "flux" in messages(after, "execution_cached")[0]["nodes"]  # the very MODEL object the runs used
    assert sampled_pixels(server, before) == sampled_pixels(server, after)
    sd35_after = server.run(sampling_graph(files, 2))
    assert sampled_pixels(server, sd35_before) == sampled_pixels(server, sd35_after)


def _free_ram() -> int:
    import psutil  # ComfyUI's own dependency

    return psutil.virtual_memory().available


def test_the_diffusers_listing_survives_a_link_loop(server):
    assert (server.base_dir / "models" / "diffusers" / "loop").is_symlink()  # loop -> . (the fixture's)
    options = server.get("/object_info/DiTFLoadDiffusersDiT")["DiTFLoadDiffusersDiT"]["input"]["required"]["folder"]
    assert options[1]["options"] == [server.files["diffusers"]]  # listed once, not once per trip round the loop


# --- Cancel -----------------------------------------------------------------------------------------------------------
def test_cancel_stops_a_capture_inside_the_pass(server):
    """Block 1 of the model pauses until the test has pressed Cancel; the capture must stop at block 2's check, so
    block 3 (which leaves a file when it runs) never runs. The pass would otherwise go on to block 5."""
    files, base = server.files, server.base_dir
    before = server.run(flux_sampling_graph(files, 3))
    assert succeeded(before), error_message(before)
    token = uuid.uuid4().hex[:8]
    graph = flux_graph(files, extract={"resolution": 1024, "layer": 5, "ensemble": 1, "seed": 31})
    graph["paused"] = {"class_type": "DiTFTestPausingModel", "inputs": {
        "model": ["flux", 0], "token": token, "pause_block": 1, "record_block": 3, "timeout": 60.0}}
    graph["load"]["inputs"]["model"] = ["paused", 0]
    status, response = server.queue(graph)
    assert status == 200, response
    _wait_for(base / f"paused_{token}", 120)  # the pass is inside block 1
    pressed = time.monotonic()
    server.post("/interrupt", {})
    (base / f"go_{token}").touch()
    interrupted = server.wait(response["prompt_id"])
    stopped = time.monotonic() - pressed
    print(f"Cancel during a 1024 px capture pass (tiny Flux, to block 5): stopped {stopped:.2f} s after Cancel")
    assert [m["node_id"] for m in messages(interrupted, "execution_interrupted")] == ["extract"]
    assert not (base / f"ran_{token}").exists(), "block 3 ran after Cancel: the pass was not stopped inside"
    after = server.run(flux_sampling_graph(files, 4))
    assert sampled_pixels(server, before) == sampled_pixels(server, after)


def test_cancel_stops_a_long_exact_match_between_chunks(server):
    """1024 points in mode exact on 2048 x 1536 images (every point against 3.1 M target pixels): Cancel after the
    first chunk reported progress stops the match there."""
    graph = match_graph(server.files, grid_points(MAX_POINTS, 2048, 1536), mode="exact", size=(2048, 1536))
    graph["extract"]["inputs"]["seed"] = 41  # not cached from another test: the match really runs
    entry, progress, stopped = _cancel_on_progress(server, graph, "match")
    print(f"Cancel during an exact match of 1024 points on 2048x1536 images: stopped {stopped:.2f} s after Cancel, "
          f"at {progress[-1][0]}/{progress[-1][1]} of its progress")
    assert [m["node_id"] for m in messages(entry, "execution_interrupted")] == ["match"]
    value, maximum = progress[-1]
    assert value < maximum  # it stopped with work left
    assert succeeded(server.run(flux_graph(server.files, extract={"seed": 42})))  # and the server carries on


def _cancel_on_progress(server, prompt: dict, node: str, timeout: float = 300.0):
    """Queue ``prompt``; press Cancel at ``node``'s first progress message. Returns (the /history entry, the node's
    progress as (value, max) pairs, seconds from Cancel to the end of the run)."""
    progress, pressed = [], []

    async def on_event(kind: str, data: dict, session) -> bool:
        if kind == "progress" and data.get("node") == node:
            progress.append((data["value"], data["max"]))
            if not pressed:
                pressed.append(time.monotonic())
                async with session.post(f"{server.url}/interrupt", json={}):
                    pass
        return kind in ("execution_interrupted", "execution_error", "execution_success")

    prompt_id = asyncio.run(server.watch(prompt, on_event, timeout))
    assert pressed, f"{node} never reported progress"
    return server.wait(prompt_id), progress, time.monotonic() - pressed[0]


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout:.0f} s"
        time.sleep(0.02)
