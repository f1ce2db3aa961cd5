"""Correspondence Match, Warp / Appearance Transfer and the Massive-Activation Inspector on a live ``main.py --cpu``
server, through API workflows on the tiny checkpoints: Extract x 2 -> Match -> Warp -> (VAE LATENT) -> KSampler end to
end, the UI payload in /history and in the websocket "executed" message, bad input refused or reported while the
server carries on, and the inspector's channels wired into Extract's discard."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re

import numpy as np
import pytest
from ditf_core.demo_model import DEMO_MASSIVE_CHANNELS
from PIL import Image

from live_server import INPUT_IMAGES, messages, succeeded

pytestmark = pytest.mark.comfyui

NODE_IDS = ("DiTFCorrespondenceMatch", "DiTFWarp", "DiTFInspector")
EXTRACT = dict(layer=-1, t=0.26, ensemble=1, seed=0, resolution=128, discard="auto", mode="ditf")
POINTS = '[{"x": 100, "y": 80}, {"x": 250, "y": 150}, {"x": 300, "y": 240}]'
MATCH = dict(points=POINTS, mode="fast", max_points=8, cycle_tolerance=2.0)
WARP = dict(method="appearance", strength=0.8, min_confidence=0.5)
ENTRY_KEYS = {"explorer", "mode", "source", "target", "valid", "grid"}


def correspondence_graph(files, match=None, warp=None, sample=True):
    """Tiny Flux -> Load DiT -> Extract x 2 -> Match -> Warp (appearance, VAE) -> Preview; its LATENT -> KSampler at
    low denoise with the same model -> VAE Decode -> Preview."""
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "img1": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "img2": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[1]}},
        "load": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["flux", 0], "vae": ["vae", 0]}},
        "ex_a": {"class_type": "DiTFExtractFeatures", "inputs": {
            "ditf_model": ["load", 0], "image": ["img1", 0], **EXTRACT}},
        "ex_b": {"class_type": "DiTFExtractFeatures", "inputs": {
            "ditf_model": ["load", 0], "image": ["img2", 0], **EXTRACT}},
        "match": {"class_type": "DiTFCorrespondenceMatch", "inputs": {
            "source": ["ex_a", 0], "target": ["ex_b", 0], "source_image": ["img1", 0], "target_image": ["img2", 0],
            **MATCH, **(match or {})}},
        "warp": {"class_type": "DiTFWarp", "inputs": {
            "image": ["img1", 0], "match": ["match", 1], "target_image": ["img2", 0], "vae": ["vae", 0],
            **WARP, **(warp or {})}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["warp", 0]}},
    }
    if sample:
        graph.update({
            "cond": {"class_type": "DiTFTestRandomConditioning", "inputs": {
                "tokens": 6, "width": 32, "pooled": 32, "batch": 1, "seed": 0, "guidance": 3.5}},
            "sampler": {"class_type": "KSampler", "inputs": {
                "model": ["flux", 0], "seed": 1, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["warp", 2], "denoise": 0.4}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
            "resampled": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
        })
    return graph


def error_message(entry) -> str:
    errors = messages(entry, "execution_error")
    return errors[0]["exception_message"] if errors else ""


def picture(server, info) -> Image.Image:
    return Image.open(io.BytesIO(server.image(info)))


def input_size(server, index=0) -> tuple[int, int]:
    return Image.open(server.base_dir / "input" / INPUT_IMAGES[index]).size


def run_watching(server, prompt: dict, timeout: float = 120.0) -> tuple[dict, list[dict]]:
    """Queue ``prompt`` from a websocket client of its own; returns (its /history entry, the "executed" messages)."""
    executed = []

    async def on_event(kind: str, data: dict, session) -> bool:
        if kind == "executed":
            executed.append(data)
        return kind == "executing" and data.get("node") is None

    prompt_id = asyncio.run(server.watch(prompt, on_event, timeout))
    return server.wait(prompt_id), executed


# --- registration ---------------------------------------------------------------------------------------------------
def test_the_nodes_are_registered_with_tooltips_everywhere(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["category"] == "DiTF" and node["description"], node_id
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert inputs and all(spec[1].get("tooltip") for spec in inputs.values()), node_id
        assert node["output_tooltips"] and all(node["output_tooltips"]), node_id
    assert info["DiTFCorrespondenceMatch"]["display_name"] == "Correspondence Match (DiTF)"
    assert info["DiTFCorrespondenceMatch"]["output"] == ["STRING", "DITF_MATCH", "IMAGE", "MASK"]
    assert info["DiTFCorrespondenceMatch"]["output_name"] == ["target_points", "match", "visualization", "confidence"]
    assert info["DiTFCorrespondenceMatch"]["input"]["required"]["points"][0] == "STRING"
    assert info["DiTFWarp"]["display_name"] == "Warp / Appearance Transfer (DiTF)"
    assert info["DiTFWarp"]["output"] == ["IMAGE", "MASK", "LATENT"]
    assert info["DiTFWarp"]["input"]["required"]["method"][1]["options"] == ["flow", "tps", "homography", "appearance"]
    assert info["DiTFInspector"]["display_name"] == "Massive-Activation Inspector (DiTF)"
    assert info["DiTFInspector"]["output"] == ["IMAGE", "STRING", "STRING"]


# --- end to end -------------------------------------------------------------------------------------------------------
def test_extract_match_warp_and_resample_end_to_end(server):
    entry, executed = run_watching(server, correspondence_graph(server.files))
    assert succeeded(entry), error_message(entry)
    size = input_size(server)
    output = entry["outputs"]["match"]
    (match,) = output["ditf_match"]
    assert set(match) == ENTRY_KEYS and match["mode"] == "fast" and len(match["explorer"]) == 32
    assert (match["source"]["width"], match["source"]["height"]) == size
    assert len(match["target"]["points"]) == len(match["target"]["scores"]) == len(match["valid"]) == 3
    assert match["source"]["points"] == [[100, 80], [250, 150], [300, 240]]
    assert match["grid"] == [8, 6]  # 128 x 96 px model input, 16 px per Flux token
    for side in ("source", "target"):
        assert picture(server, match[side]["image"]).size == (match[side]["width"], match[side]["height"])
    assert picture(server, output["images"][0]).size == (2 * size[0] + 8, size[1])  # the match picture
    assert picture(server, entry["outputs"]["show"]["images"][0]).size == input_size(server, 1)
    assert picture(server, entry["outputs"]["resampled"]["images"][0]).size == input_size(server, 1)
    # the websocket carries the same UI payload the frontend's onExecuted reads
    sent = [m["output"] for m in executed if m["node"] == "match"]
    assert sent and sent[0]["ditf_match"] == output["ditf_match"] and sent[0]["images"] == output["images"]


def test_target_points_json_feeds_a_points_input(server):
    """target_points is plain KJNodes JSON: it drives a second match from the target back to the source."""
    graph = correspondence_graph(server.files, sample=False)
    graph["back"] = {"class_type": "DiTFCorrespondenceMatch", "inputs": {
        "source": ["ex_b", 0], "target": ["ex_a", 0], "source_image": ["img2", 0], "target_image": ["img1", 0],
        **MATCH, "points": ["match", 0]}}
    entry = server.run(graph)
    assert succeeded(entry), error_message(entry)
    forward = entry["outputs"]["match"]["ditf_match"][0]
    back = entry["outputs"]["back"]["ditf_match"][0]
    assert back["source"]["points"] == forward["target"]["points"]


def test_a_mask_supplies_points_and_is_transferred(server):
    graph = correspondence_graph(server.files, match={"points": "", "max_points": 5}, warp={"method": "flow"},
                                 sample=False)
    graph["region"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 384, "height": 288}}
    graph["match"]["inputs"]["source_mask"] = ["region", 0]
    graph["warp"]["inputs"]["mask"] = ["region", 0]
    graph["mask_image"] = {"class_type": "MaskToImage", "inputs": {"mask": ["warp", 1]}}
    graph["show_mask"] = {"class_type": "PreviewImage", "inputs": {"images": ["mask_image", 0]}}
    entry = server.run(graph)
    assert succeeded(entry), error_message(entry)
    match = entry["outputs"]["match"]["ditf_match"][0]
    assert len(match["source"]["points"]) == 5 and all(match["valid"])
    transferred = np.asarray(picture(server, entry["outputs"]["show_mask"]["images"][0]).convert("L"))
    assert transferred.shape == input_size(server, 1)[::-1] and transferred.mean() > 200  # a full mask stays full


# --- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node, widgets, message", [
    ("match", {"mode": "bogus"}, "mode must be one of fast, exact"),
    ("match", {"cycle_tolerance": math.nan}, "cycle_tolerance must be a finite number"),
    ("match", {"points": "not json"}, "points are not valid JSON"),
    ("match", {"points": '[{"x": NaN, "y": 10}]'}, "points contains NaN"),
    ("warp", {"method": "warp-drive"}, "method must be one of flow, tps, homography, appearance"),
    ("warp", {"strength": math.nan}, "strength must be a finite number"),
])
def test_bad_widgets_are_refused_at_queue_time(server, node, widgets, message):
    graph = correspondence_graph(server.files, sample=False)
    graph[node]["inputs"].update(widgets)
    status, response = server.queue(graph)
    assert message in str(response["node_errors"][node])
    if status == 200:  # ComfyUI still runs the output nodes that validated (Extract's previews, an intact Match)
        entry = server.wait(response["prompt_id"])
        assert node not in entry["outputs"] and "show" not in entry["outputs"]  # the refused node never ran
        # a NaN kept in /history makes the 1.27.10 frontend fail to parse /history: leave none for later tests
        server.post("/history", {"delete": [response["prompt_id"]]})
        assert response["prompt_id"] not in server.get("/history")


def batch_of(graph, name, *images):
    """An ImageBatch node chain ``name`` of the given LoadImage nodes."""
    previous = images[0]
    for index, image in enumerate(images[1:]):
        node = f"{name}{index}"
        graph[node] = {"class_type": "ImageBatch", "inputs": {"image1": [previous, 0], "image2": [image, 0]}}
        previous = node
    return [previous, 0]


def mismatched_batches(graph):
    two, three = batch_of(graph, "two", "img1", "img2"), batch_of(graph, "three", "img1", "img2", "img1")
    graph["ex_a"]["inputs"]["image"] = graph["match"]["inputs"]["source_image"] = two
    graph["ex_b"]["inputs"]["image"] = graph["match"]["inputs"]["target_image"] = three


def resized_source_image(graph):
    graph["small"] = {"class_type": "ImageScale", "inputs": {
        "image": ["img1", 0], "upscale_method": "bilinear", "width": 200, "height": 150, "crop": "disabled"}}
    graph["match"]["inputs"]["source_image"] = ["small", 0]


def resized_target_image(graph):
    graph["small_b"] = {"class_type": "ImageScale", "inputs": {
        "image": ["img2", 0], "upscale_method": "bilinear", "width": 192, "height": 144, "crop": "disabled"}}
    graph["match"]["inputs"]["target_image"] = ["small_b", 0]


def other_layer(graph):
    graph["ex_b"]["inputs"]["layer"] = 2


def no_target_image(graph):
    del graph["warp"]["inputs"]["target_image"]


def no_vae_but_latent_used(graph):
    del graph["warp"]["inputs"]["vae"]


@pytest.mark.parametrize("change, message", [
    ({"points": "[]"}, "points is empty: click points on the source image"),
    ({"points": '[{"x": 5000, "y": 10}]'}, "lies outside the 384x288 source image"),
    (mismatched_batches, "source features hold 2 images but target features 3"),
    (resized_source_image, "source_image is 200x150 but the source features were extracted from images of 384x288"),
    (resized_target_image, "target_image is 192x144 but the target features were extracted from images of 384x288"),
    (other_layer, "source was extracted with layer=3 but target with layer=2"),
    (no_target_image, "method appearance needs target_image"),
    (no_vae_but_latent_used, "LATENT output of Warp / Appearance Transfer (DiTF) needs a VAE"),
])
def test_bad_input_is_reported_and_the_server_carries_on(server, change, message):
    graph = correspondence_graph(server.files)
    if callable(change):
        change(graph)
    else:
        graph["match"]["inputs"].update(change)
    entry = server.run(graph)
    assert not succeeded(entry) and message in error_message(entry), error_message(entry)
    assert succeeded(server.run(correspondence_graph(server.files, sample=False)))


def test_without_a_vae_the_latent_output_explains_itself(server):
    graph = correspondence_graph(server.files, warp={"method": "flow", "strength": 0.3})
    del graph["warp"]["inputs"]["vae"]
    linked = server.run(graph)  # the LATENT output feeds KSampler: Warp itself stops, before any work
    assert [m["node_id"] for m in messages(linked, "execution_error")] == ["warp"]
    assert "connect one to its vae input" in error_message(linked)
    unused = {name: node for name, node in graph.items() if name not in ("cond", "sampler", "decode", "resampled")}
    assert succeeded(server.run(unused)), "an unlinked LATENT without a VAE is fine"
    later = server.run(graph)  # linked after the run: Warp's result is cached, KSampler reads the LATENT and stops
    assert "warp" in messages(later, "execution_cached")[0]["nodes"]
    assert [m["node_id"] for m in messages(later, "execution_error")] == ["sampler"]
    assert "LATENT output of Warp / Appearance Transfer (DiTF) needs a VAE" in error_message(later)


# --- Massive-Activation Inspector -----------------------------------------------------------------------------------
def test_inspector_channels_feed_extract_discard(server):
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": server.files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": server.files["vae"]}},
        "img1": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "load": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["flux", 0], "vae": ["vae", 0]}},
        "inspect": {"class_type": "DiTFInspector", "inputs": {
            "ditf_model": ["load", 0], "image": ["img1", 0], "layers": "", "sweep": True, "t": 0.26, "ensemble": 1,
            "seed": 0, "resolution": 64, "ratio": 100.0}},
        "extract": {"class_type": "DiTFExtractFeatures", "inputs": {
            "ditf_model": ["load", 0], "image": ["img1", 0], **EXTRACT, "discard": ["inspect", 2]}},
        "channels": {"class_type": "PreviewAny", "inputs": {"source": ["inspect", 2]}},
        "features": {"class_type": "PreviewAny", "inputs": {"source": ["extract", 0]}},
        "report": {"class_type": "PreviewAny", "inputs": {"source": ["inspect", 1]}},
    }
    entry = server.run(graph)
    assert succeeded(entry), error_message(entry)
    channels = entry["outputs"]["channels"]["text"][0]
    assert sorted(int(c) for c in channels.split(",")) == sorted(DEMO_MASSIVE_CHANNELS)
    discarded = re.search(r"discarded=\(([^)]*)\)", entry["outputs"]["features"]["text"][0]).group(1)
    assert sorted(int(c) for c in discarded.split(",") if c.strip()) == sorted(DEMO_MASSIVE_CHANNELS)
    report = json.loads(entry["outputs"]["report"]["text"][0])
    assert report["channels_text"] == channels and report["sweep"]["first_massive_layer"] == 2
    previews = entry["outputs"]["inspect"]["images"]
    assert len(previews) == len(report["figures"]) == 5
    for info in previews:
        grey = np.asarray(picture(server, info).convert("L"), dtype=np.float32)
        assert grey.shape[1] == 1000 and grey.std() > 10.0  # drawn plots, not blank pages
    def with_layers(text):
        return {**graph, "inspect": {**graph["inspect"], "inputs": {**graph["inspect"]["inputs"], "layers": text}}}

    status, response = server.queue(with_layers("3 4"))
    assert "layers must be block numbers" in str(response["node_errors"]["inspect"])
    if status == 200:
        server.wait(response["prompt_id"])
    bad_layer = server.run(with_layers("9"))
    assert "block 9 in layers is out of range" in error_message(bad_layer)
