"""Propagate Mask (DiTF) and Track Points (DiTF) on a live ``main.py --cpu`` server: registration, one workflow
with both nodes on the tiny Flux checkpoint (frames cut from a picture with stock nodes, a rectangle mask from
stock mask nodes), bad input reported while the server carries on, and Cancel mid-clip leaving the MODEL's
samples identical."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from live_server import INPUT_IMAGES, messages, succeeded

pytestmark = pytest.mark.comfyui

FRAMES, WIDTH, HEIGHT = 4, 256, 192
EXTRACT = dict(layer=-1, t=0.26, ensemble=1, seed=0, resolution=128, discard="auto", frames_per_pass=2)
POINTS = '[{"x": 60, "y": 50}, {"x": 150, "y": 120}]'


def clip_nodes(graph: dict, frames: int = FRAMES) -> list:
    """LoadImage -> ``frames`` crops moving 16 px right each -> one IMAGE batch; returns its link."""
    graph["picture"] = {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}}
    link = None
    for t in range(frames):
        graph[f"crop{t}"] = {"class_type": "ImageCrop", "inputs": {
            "image": ["picture", 0], "width": WIDTH, "height": HEIGHT, "x": 16 * t, "y": 40}}
        if link is None:
            link = [f"crop{t}", 0]
        else:
            graph[f"batch{t}"] = {"class_type": "ImageBatch", "inputs": {"image1": link, "image2": [f"crop{t}", 0]}}
            link = [f"batch{t}", 0]
    return link


def video_graph(files, propagate=None, track=None) -> dict:
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "load": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["flux", 0], "vae": ["vae", 0]}},
        "empty": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}},
        "box": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 80, "height": 60}},
        "mask": {"class_type": "MaskComposite", "inputs": {
            "destination": ["empty", 0], "source": ["box", 0], "x": 40, "y": 30, "operation": "add"}},
    }
    frames = clip_nodes(graph)
    graph.update({
        "propagate": {"class_type": "DiTFPropagateMask", "inputs": {
            "ditf_model": ["load", 0], "frames": frames, "mask": ["mask", 0], "keyframes": "0", **EXTRACT,
            "context": 7, "radius": 12, "top_k": 5, "temperature": 0.1, **(propagate or {})}},
        "track": {"class_type": "DiTFTrackPoints", "inputs": {
            "ditf_model": ["load", 0], "frames": frames, "points": POINTS, **EXTRACT, "threshold": 0.6,
            "search_radius": 8, **(track or {})}},
        "masks": {"class_type": "MaskToImage", "inputs": {"mask": ["propagate", 0]}},
        "show_masks": {"class_type": "PreviewImage", "inputs": {"images": ["masks", 0]}},
        "show_overlay": {"class_type": "PreviewImage", "inputs": {"images": ["propagate", 1]}},
        "show_tracks": {"class_type": "PreviewImage", "inputs": {"images": ["track", 3]}},
        "tracks": {"class_type": "PreviewAny", "inputs": {"source": ["track", 0]}},
        "per_frame": {"class_type": "PreviewAny", "inputs": {"source": ["track", 1]}},
    })
    return graph


def error_message(entry) -> str:
    errors = messages(entry, "execution_error")
    return errors[0]["exception_message"] if errors else ""


def pictures(server, entry, node) -> list[Image.Image]:
    return [Image.open(io.BytesIO(server.image(info))) for info in entry["outputs"][node]["images"]]


def test_the_video_nodes_are_registered(server):
    info = server.get("/object_info")
    for node_id in ("DiTFPropagateMask", "DiTFTrackPoints"):
        node = info[node_id]
        assert node["category"] == "DiTF/video" and node["description"]
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in inputs.values()) and all(node["output_tooltips"]), node_id
        assert inputs["ditf_model"][0] == "DITF_MODEL" and inputs["frames"][0] == "IMAGE"
    assert info["DiTFPropagateMask"]["output"] == ["MASK", "IMAGE"]
    assert info["DiTFTrackPoints"]["output"] == ["STRING", "STRING", "STRING", "IMAGE"]
    assert info["DiTFTrackPoints"]["output_is_list"] == [False, True, False, False]


def test_both_nodes_in_one_workflow_on_the_tiny_flux(server):
    started = time.monotonic()
    entry = server.run(video_graph(server.files))
    assert succeeded(entry), error_message(entry)
    masks = pictures(server, entry, "show_masks")
    assert len(masks) == FRAMES and all(p.size == (WIDTH, HEIGHT) for p in masks)
    first = np.asarray(masks[0].convert("L")) > 127
    assert first[30:90, 40:120].all() and first.sum() == 80 * 60  # frame 0 keeps the given mask
    assert [p.size for p in pictures(server, entry, "show_overlay")] == [(WIDTH, HEIGHT)] * FRAMES
    assert [p.size for p in pictures(server, entry, "show_tracks")] == [(WIDTH, HEIGHT)] * FRAMES
    tracks = json.loads(entry["outputs"]["tracks"]["text"][0])
    assert len(tracks) == FRAMES and tracks[0]["points"][1] == {"x": 150, "y": 120, "visible": True, "score": 1.0}
    per_frame = entry["outputs"]["per_frame"]["text"]  # the list output: one KJNodes JSON per frame
    assert len(per_frame) == FRAMES and json.loads(per_frame[0]) == [{"x": 60, "y": 50}, {"x": 150, "y": 120}]
    print(f"propagate + track, {FRAMES} frames of {WIDTH}x{HEIGHT} at 128 px, tiny Flux: "
          f"{time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("node, change, message", [
    ("propagate", {"mask": ["box", 0]}, "mask is 80x60 but the frames are 256x192"),
    ("propagate", {"keyframes": "0, 2"}, "mask holds 1 masks but keyframes lists 2 frames"),
    ("track", {"points": '[{"x": 300, "y": 10}]'}, "points[0] = (300, 10) lies outside the 256x192"),
])
def test_bad_input_is_reported_and_the_server_carries_on(server, node, change, message):
    graph = video_graph(server.files)
    graph[node]["inputs"].update(change)
    entry = server.run(graph)
    assert not succeeded(entry) and message in error_message(entry), error_message(entry)


@pytest.mark.parametrize("node, change, message", [
    ("propagate", {"keyframes": "zero"}, "keyframes must be frame numbers"),
    ("track", {"points": "not json"}, "points are not valid JSON"),
])
def test_bad_widgets_are_refused_at_queue_time(server, node, change, message):
    graph = video_graph(server.files)
    graph[node]["inputs"].update(change)
    status, response = server.queue(graph)
    assert message in str(response["node_errors"][node])
    if status == 200:  # the other output nodes still run
        server.wait(response["prompt_id"])


def sampling_graph(files, seed_nodes: int) -> dict:
    """KSampler on the tiny Flux MODEL. ``seed_nodes`` PrimitiveInt nodes in a row (same value) change the graph,
    not the sample, so the sampler really runs again."""
    seed = 3
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "cond": {"class_type": "DiTFTestRandomConditioning", "inputs": {
            "tokens": 6, "width": 32, "pooled": 32, "batch": 1, "seed": 0, "guidance": 3.5}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    link = seed
    for i in range(seed_nodes):
        graph[f"seed{i}"] = {"class_type": "PrimitiveInt", "inputs": {"value": seed if i == 0 else [f"seed{i - 1}", 0]}}
        link = [f"seed{i}", 0]
    graph.update({
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["flux", 0], "seed": link, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "ditf_video_sample"}},
    })
    return graph


def test_cancel_mid_clip_leaves_the_model_giving_the_same_samples(server):
    def sampled(entry) -> bytes:
        info = entry["outputs"]["save"]["images"][0]
        return Image.open(io.BytesIO(server.image(info))).tobytes()

    before = server.run(sampling_graph(server.files, 1))
    assert succeeded(before), error_message(before)
    long_clip = video_graph(server.files, propagate={"ensemble": 16, "resolution": 256, "frames_per_pass": 1})
    long_clip["repeat"] = {"class_type": "RepeatImageBatch", "inputs": {"image": long_clip["propagate"]["inputs"]["frames"],
                                                                       "amount": 100}}
    long_clip["propagate"]["inputs"]["frames"] = ["repeat", 0]
    for name in ("track", "tracks", "per_frame", "show_tracks"):
        del long_clip[name]
    status, response = server.queue(long_clip)
    assert status == 200, response
    deadline = time.monotonic() + 60
    while not server.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(3.0)  # frames are being propagated
    server.post("/interrupt", {})
    interrupted = server.wait(response["prompt_id"])
    assert [m["node_id"] for m in messages(interrupted, "execution_interrupted")] == ["propagate"], interrupted["status"]
    after = server.run(sampling_graph(server.files, 2))
    assert succeeded(after), error_message(after)
    assert "flux" in messages(after, "execution_cached")[0]["nodes"]  # the very MODEL object the clip used
    assert sampled(before) == sampled(after)
