"""Fuse DINOv2 and Co-Segment on a live ``main.py --cpu`` server, through API workflows: tiny Flux -> Extract x 2 ->
Fuse DINOv2 x 2 (ComfyUI's own DINOv2 class, tiny, as a CLIP_VISION) -> Correspondence Match -> Warp, and Co-Segment
on the fused features; bad input reported while the server carries on."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

import tiny_dino
from live_server import messages, succeeded
from test_nodes_server import correspondence_graph

pytestmark = pytest.mark.comfyui

DINO_FILE, CLIP_FILE = "ditf_test_dinov2.safetensors", "ditf_test_clip_vision.safetensors"
FUSE = dict(dit_weight=0.5, dino_resolution=126, pca_dims=0)
POINTS = '[{"x": 100, "y": 80}, {"x": 250, "y": 150}]'


@pytest.fixture(scope="module")
def vision_files(server, tmp_path_factory):
    """The tiny DINOv2 (Hugging Face layout, as ComfyUI reads DINOv2 checkpoints) and a tiny CLIP vision model, in the
    server's models/clip_vision with their JSON configs in the metadata (for the test-only loader)."""
    folder = server.base_dir / "models" / "clip_vision"
    state = tiny_dino.dinov2_checkpoint(tiny_dino.tiny_dinov2(), tmp_path_factory.mktemp("hf_dinov2"))
    tiny_dino.write_checkpoint(folder / DINO_FILE, tiny_dino.comfy_dinov2_config(), state)
    tiny_dino.write_checkpoint(folder / CLIP_FILE, tiny_dino.TINY_CLIP_VISION, tiny_dino.clip_vision_state())
    return {"dino": DINO_FILE, "clip": CLIP_FILE}


def fusion_graph(files, vision: str, fuse=None):
    """The correspondence workflow of test_nodes_server (tiny Flux -> Extract x 2 -> Match -> Warp) with Fuse DINOv2
    between Extract and Match, and Co-Segment of the fused source -> its masks as images."""
    graph = correspondence_graph(files, warp={"method": "flow"}, sample=False)
    graph["vision"] = {"class_type": "DiTFTestTinyClipVision", "inputs": {"name": vision}}
    for side, image in (("a", "img1"), ("b", "img2")):
        graph[f"fuse_{side}"] = {"class_type": "DiTFFuseDINOv2", "inputs": {
            "features": [f"ex_{side}", 0], "clip_vision": ["vision", 0], "image": [image, 0], **FUSE, **(fuse or {})}}
    graph["match"]["inputs"].update(source=["fuse_a", 0], target=["fuse_b", 0], points=POINTS)
    graph["coseg"] = {"class_type": "DiTFCoSegment", "inputs": {
        "features": ["fuse_a", 0], "clusters": 3, "seed": 0, "iterations": 50, "cluster": 0, "image": ["img1", 0]}}
    graph["mask_image"] = {"class_type": "MaskToImage", "inputs": {"mask": ["coseg", 1]}}
    graph["show_masks"] = {"class_type": "PreviewImage", "inputs": {"images": ["mask_image", 0]}}
    return graph


def server_picture(server, info) -> Image.Image:
    return Image.open(io.BytesIO(server.image(info)))


def error_message(entry) -> str:
    errors = messages(entry, "execution_error")
    return errors[0]["exception_message"] if errors else ""


def test_fuse_match_warp_and_cosegment_end_to_end(server, vision_files):
    entry = server.run(fusion_graph(server.files, vision_files["dino"]))
    assert succeeded(entry), error_message(entry)
    outputs = entry["outputs"]
    assert outputs["fuse_a"]["images"] and outputs["fuse_b"]["images"]  # the PCA previews of the fused features
    (match,) = outputs["match"]["ditf_match"]
    assert len(match["target"]["points"]) == 2 and match["grid"] == [8, 6]
    assert outputs["show"]["images"] and outputs["coseg"]["images"]
    assert len(outputs["show_masks"]["images"]) == 3  # one mask per cluster for the one source image
    masks = [np.asarray(server_picture(server, info).convert("L")) for info in outputs["show_masks"]["images"]]
    assert masks[0].shape == (288, 384)
    covered = sum((mask > 127).astype(int) for mask in masks)
    assert (covered == 1).all()  # every pixel in exactly one cluster


def clip_instead_of_dino(graph, files):
    graph["vision"]["inputs"]["name"] = files["clip"]


def unfused_target(graph, files):
    graph["match"]["inputs"]["target"] = ["ex_b", 0]


def other_image(graph, files):
    graph["small"] = {"class_type": "ImageScale", "inputs": {
        "image": ["img1", 0], "upscale_method": "bilinear", "width": 200, "height": 150, "crop": "disabled"}}
    graph["fuse_a"]["inputs"]["image"] = ["small", 0]


# Both Fuse nodes read the one CLIP vision loader, so either may run first and report the CLIP model (ComfyUI does
# not promise an order between independent nodes); the error stops the run at the first.
@pytest.mark.parametrize("change, nodes, message", [
    (clip_instead_of_dino, {"fuse_a", "fuse_b"},
     "clip_vision holds a CLIP vision model (CLIPVisionModelProjection), not DINOv2"),
    (unfused_target, {"match"}, "source is fused with DINOv2 32-wide"),
    (other_image, {"fuse_a"}, "image is 200x150 but the features were extracted from images of 384x288"),
])
def test_bad_input_is_reported(server, vision_files, change, nodes, message):
    graph = fusion_graph(server.files, vision_files["dino"])
    change(graph, vision_files)
    entry = server.run(graph)
    assert not succeeded(entry) and message in error_message(entry), error_message(entry)
    (failed,) = [m["node_id"] for m in messages(entry, "execution_error")]
    assert failed in nodes


def test_the_server_carries_on_after_bad_input(server, vision_files):
    assert succeeded(server.run(fusion_graph(server.files, vision_files["dino"], fuse={"dit_weight": 0.6})))


def test_a_nan_weight_is_refused_at_queue_time(server, vision_files):
    graph = fusion_graph(server.files, vision_files["dino"], fuse={"dit_weight": math.nan})
    status, response = server.queue(graph)
    assert "dit_weight must be a number in [0, 1]" in str(response["node_errors"]["fuse_a"])
    if status == 200:  # the output nodes that validated still ran: keep no NaN in /history for later tests
        server.wait(response["prompt_id"])
        server.post("/history", {"delete": [response["prompt_id"]]})
