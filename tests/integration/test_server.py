"""A live ``main.py --cpu`` server with the pack in custom_nodes: registration, API workflows end to end on tiny
checkpoints (SD3.5 through the stock loaders, tiny Flux, a diffusers folder), caching, bad input, and the user's
MODEL giving identical samples before and after extraction (also after an error and an interrupt)."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import pytest
from PIL import Image

from live_server import INPUT_IMAGES, PACK_DIR, messages, succeeded

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]

NODE_IDS = ("DiTFLoadDiT", "DiTFLoadDiffusersDiT", "DiTFExtractFeatures")
EXTRACT = dict(layer=-1, t=0.26, ensemble=2, seed=0, resolution=256, discard="auto", mode="ditf")


def sd35_graph(files, extract=None, prompt="a photo of shapes"):
    """Stock UNETLoader / VAELoader / CLIPLoader -> Load DiT -> Extract DiTF Features on two batched images."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": files["sd35"], "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": files["clip_l"], "type": "sd3", "device": "default"}},
        "img1": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "img2": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[1]}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["img1", 0], "image2": ["img2", 0]}},
        "load": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["unet", 0], "vae": ["vae", 0], "clip": ["clip", 0]}},
        "extract": {"class_type": "DiTFExtractFeatures", "inputs": {
            "ditf_model": ["load", 0], "image": ["batch", 0], "prompt": prompt, **EXTRACT, **(extract or {})}},
    }


def flux_graph(files, extract=None, conditioning=False):
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "img1": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "load": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["flux", 0], "vae": ["vae", 0]}},
        "extract": {"class_type": "DiTFExtractFeatures", "inputs": {
            "ditf_model": ["load", 0], "image": ["img1", 0], **EXTRACT, **(extract or {})}},
    }
    if conditioning:
        graph["cond"] = {"class_type": "DiTFTestRandomConditioning", "inputs": {
            "tokens": 6, "width": 32, "pooled": 32, "batch": 1, "seed": 0, "guidance": 4.0}}
        graph["extract"]["inputs"]["conditioning"] = ["cond", 0]
    return graph


def preview_sizes(server, entry, node="extract"):
    return [Image.open(io.BytesIO(server.image(info))).size for info in entry["outputs"][node]["images"]]


def error_message(entry) -> str:
    errors = messages(entry, "execution_error")
    return errors[0]["exception_message"] if errors else ""


# --- registration ------------------------------------------------------------------------------------------------
def test_pack_loads_cleanly_and_its_nodes_are_in_object_info(server):
    print(f"server start-up: {server.startup_seconds:.1f} s")
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["category"] == "DiTF" and node["description"]
        assert node["python_module"] == f"custom_nodes.{PACK_DIR}"
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert inputs and all(spec[1].get("tooltip") for spec in inputs.values()), node_id
        assert node["output_tooltips"] and all(node["output_tooltips"]), node_id
    assert info["DiTFLoadDiT"]["output"] == ["DITF_MODEL", "STRING"]
    assert info["DiTFExtractFeatures"]["output"] == ["DITF_FEATURES", "IMAGE"]
    assert info["DiTFExtractFeatures"]["input"]["required"]["ditf_model"][0] == "DITF_MODEL"
    assert info["DiTFLoadDiffusersDiT"]["input"]["required"]["folder"][1]["options"] == [server.files["diffusers"]]
    startup = server.log().split("To see the GUI go to")[0]
    assert our_import_problems(startup) == [], startup[-3000:]
    assert PACK_DIR in startup  # listed among the imported custom nodes


def our_import_problems(log: str) -> list[str]:
    """Lines of the start-up log where our pack (or its test nodes) failed to import or appears in a traceback.
    ComfyUI's own optional nodes may fail on a machine (nodes_audio without torchaudio): not ours to judge."""
    ours = (f"custom_nodes/{PACK_DIR}", "custom_nodes/ditf_test_nodes", str(ROOT))
    failure = ("Cannot import", "IMPORT FAILED", 'File "')
    return [line for line in log.splitlines() if any(m in line for m in failure) and any(o in line for o in ours)]


def test_import_problems_are_ours_only_when_they_name_our_pack():
    comfy_own = "Cannot import /c/comfy_extras/nodes_audio.py module for custom nodes: No module named 'torchaudio'"
    ours = [f"Cannot import /c/custom_nodes/{PACK_DIR} module for custom nodes: boom",
            f'  File "/c/custom_nodes/{PACK_DIR}/nodes/entrypoint.py", line 3, in <module>',
            f"   0.1 seconds (IMPORT FAILED): /c/custom_nodes/{PACK_DIR}"]
    assert our_import_problems("\n".join([comfy_own, "Traceback (most recent call last):", *ours])) == ours


# --- end to end ----------------------------------------------------------------------------------------------------
def test_sd35_through_stock_loaders_with_a_prompt(server):
    started = time.monotonic()
    entry = server.run(sd35_graph(server.files))
    assert succeeded(entry), error_message(entry)
    assert preview_sizes(server, entry) == [Image.open(server.base_dir / "input" / INPUT_IMAGES[0]).size] * 2
    print(f"SD3.5 stock loaders + CLIP prompt, 2 images, E=2, 256 px: {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("conditioning", [False, True])
def test_tiny_flux_with_zero_or_given_conditioning(server, conditioning):
    entry = server.run(flux_graph(server.files, conditioning=conditioning))
    assert succeeded(entry), error_message(entry)
    assert len(preview_sizes(server, entry)) == 1


def test_diffusers_folder_loader(server):
    graph = flux_graph(server.files)
    del graph["flux"], graph["vae"]
    graph["load"] = {"class_type": "DiTFLoadDiffusersDiT", "inputs": {
        "folder": server.files["diffusers"], "text_encoders": False, "weight_dtype": "auto"}}
    entry = server.run(graph)
    assert succeeded(entry), error_message(entry)
    graph["load"]["inputs"]["folder"] = "../../custom_nodes"  # shared workflows are untrusted input
    status, response = server.queue(graph)
    assert status == 400 and "not a diffusers folder under models/diffusers" in str(response["node_errors"])


def test_identical_inputs_hit_the_cache_and_a_new_seed_reruns(server):
    graph = flux_graph(server.files, extract={"seed": 11})
    first = server.run(graph)
    second = server.run(graph)
    assert succeeded(first) and succeeded(second)
    assert "extract" in messages(second, "execution_cached")[0]["nodes"]
    third = server.run(flux_graph(server.files, extract={"seed": 12}))
    assert succeeded(third) and "extract" not in messages(third, "execution_cached")[0]["nodes"]


# --- bad input never crashes the server -------------------------------------------------------------------------------
@pytest.mark.parametrize("widgets, message", [
    ({"mode": "bogus"}, "mode must be one of ditf, adaln, original"),
    ({"t": math.nan}, "t must be a finite number"),
    ({"discard": "154; x"}, "discard must be 'auto', 'none'"),
])
def test_bad_widgets_are_refused_at_queue_time(server, widgets, message):
    status, response = server.queue(flux_graph(server.files, extract=widgets))
    assert status == 400 and message in str(response["node_errors"]["extract"])


def test_execution_errors_are_reported_and_the_server_carries_on(server):
    no_clip = server.run(flux_graph(server.files, extract={"prompt": "a cat"}))
    assert not succeeded(no_clip) and "wire a CLIP into Load DiT" in error_message(no_clip)
    too_wide = server.run(flux_graph(server.files, extract={"discard": "5000"}))
    assert "discard channel 5000 is out of range" in error_message(too_wide)
    bad_layer = server.run(flux_graph(server.files, extract={"layer": 40}))
    assert "layer 40 is out of range" in error_message(bad_layer) and "0..5" in error_message(bad_layer)
    assert succeeded(server.run(flux_graph(server.files, extract={"seed": 99})))


# --- the user's MODEL is untouched ---------------------------------------------------------------------------------------
def sampling_graph(files, shift_nodes: int):
    """KSampler on the SD3.5 MODEL from the same UNETLoader. ``shift_nodes`` ModelSamplingSD3(3.0) in a row give the
    same model (the node sets, not stacks, the shift) but a different graph, so the sampler really runs again."""
    graph = sd35_graph(files)
    model = ["unet", 0]
    for i in range(shift_nodes):
        graph[f"shift{i}"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": model, "shift": 3.0}}
        model = [f"shift{i}", 0]
    graph.update({
        "text": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "shapes"}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 3, "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["text", 0], "negative": ["text", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"ditf_sampling_{shift_nodes}"}},
    })
    del graph["extract"]
    return graph


def flux_sampling_graph(files, shift_nodes: int):
    """KSampler on the tiny Flux MODEL from the same loader node; ``shift_nodes`` ModelSamplingSD3(3.0) in a row give
    the same model but a different graph, so the sampler runs again (as sampling_graph does for SD3.5)."""
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "cond": {"class_type": "DiTFTestRandomConditioning", "inputs": {
            "tokens": 6, "width": 32, "pooled": 32, "batch": 1, "seed": 0, "guidance": 3.5}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    model = ["flux", 0]
    for i in range(shift_nodes):
        graph[f"shift{i}"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": model, "shift": 3.0}}
        model = [f"shift{i}", 0]
    graph.update({
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                       "filename_prefix": f"ditf_flux_sampling_{shift_nodes}"}},
    })
    return graph


def sampled_pixels(server, entry) -> bytes:
    return Image.open(io.BytesIO(server.image(entry["outputs"]["save"]["images"][0]))).tobytes()


def test_sampling_before_and_after_extraction_is_identical(server):
    files = server.files
    before = server.run(sampling_graph(files, 1))
    assert succeeded(before), error_message(before)

    assert succeeded(server.run(sd35_graph(files, extract={"seed": 5})))
    faulty = sd35_graph(files, extract={"seed": 6})
    faulty["faulty"] = {"class_type": "DiTFTestFaultyModel", "inputs": {"model": ["unet", 0]}}
    faulty["load"]["inputs"]["model"] = ["faulty", 0]  # block 0 raises in the middle of the capture pass
    assert "simulated fault inside the forward pass" in error_message(server.run(faulty))
    status, response = server.queue(sd35_graph(files, extract={"seed": 7, "ensemble": 64, "resolution": 1024}))
    assert status == 200
    deadline = time.monotonic() + 60
    while not server.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # loaders are cached: extraction is under way
    server.post("/interrupt", {})
    interrupted = server.wait(response["prompt_id"])
    assert [m["node_id"] for m in messages(interrupted, "execution_interrupted")] == ["extract"], interrupted["status"]

    after = server.run(sampling_graph(files, 2))
    assert succeeded(after), error_message(after)
    assert "unet" in messages(after, "execution_cached")[0]["nodes"]  # the very MODEL object the extractions used
    assert sampled_pixels(server, before) == sampled_pixels(server, after)
    print("before/after sampling over the API: identical pixels (after success, error and interrupt)")
