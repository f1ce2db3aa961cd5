"""The massive-activation nodes on a live ``main.py --cpu`` server, in API workflows with the stock KSampler on the
tiny checkpoints: Transport (text and image source), Disruption and Detail Guidance on tiny Flux, Transport from a
reference image on the stock-loaded SD3.5, the Mask node; bad input refused at queue time or reported at run time
while the server carries on."""

from __future__ import annotations

import math

import pytest

from live_server import INPUT_IMAGES, messages, succeeded

pytestmark = pytest.mark.comfyui

NODE_IDS = ("DiTFMassiveActivationTransport", "DiTFMassiveActivationDisruption", "DiTFDetailGuidance",
            "DiTFMassiveActivationMask")
TRANSPORT = dict(blocks="all", start_percent=0.0, end_percent=1.0, top_k=2, mask="source", strength=1.0, seed=0)


def conditioning(seed, width=32, pooled=32):
    return {"class_type": "DiTFTestRandomConditioning", "inputs": {
        "tokens": 6, "width": width, "pooled": pooled, "batch": 1, "seed": seed, "guidance": 3.5}}


def sampled(model, positive, negative, cfg=1.0, seed=1):
    return {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": 2, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
        "positive": positive, "negative": negative, "latent_image": ["latent", 0], "denoise": 1.0}}


def flux_graph(files) -> dict:
    """Tiny Flux patched three ways (transport from a prompt, disruption, Detail Guidance), each sampled by a
    KSampler (CFG 1 and 2), decoded and previewed."""
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "positive": conditioning(3), "negative": conditioning(4), "source": conditioning(7),
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "transport": {"class_type": "DiTFMassiveActivationTransport", "inputs": {
            "model": ["flux", 0], "source_conditioning": ["source", 0], **TRANSPORT}},
        "disruption": {"class_type": "DiTFMassiveActivationDisruption", "inputs": {
            "model": ["flux", 0], "blocks": "2-5", "start_percent": 0.0, "end_percent": 1.0, "top_k": 2,
            "control": False}},
        "guidance": {"class_type": "DiTFDetailGuidance", "inputs": {
            "model": ["flux", 0], "layer": -1, "weight": 1.0, "channels": "auto", "start_percent": 0.0,
            "end_percent": 1.0}},
    }
    for name, cfg in (("transport", 1.0), ("disruption", 2.0), ("guidance", 2.0)):
        graph[f"{name}_sample"] = sampled([name, 0], ["positive", 0], ["negative", 0], cfg)
        graph[f"{name}_decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{name}_sample", 0],
                                                                         "vae": ["vae", 0]}}
        graph[f"{name}_show"] = {"class_type": "PreviewImage", "inputs": {"images": [f"{name}_decode", 0]}}
    return graph


def test_the_nodes_are_registered_with_tooltips_everywhere(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["category"] == "DiTF/massive activations" and node["description"], node_id
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        assert inputs and all(spec[1].get("tooltip") for spec in inputs.values()), node_id
        assert node["output_tooltips"] and all(node["output_tooltips"]), node_id
    assert info["DiTFMassiveActivationTransport"]["output"] == ["MODEL"]
    assert info["DiTFMassiveActivationTransport"]["input"]["required"]["mask"][1]["options"] == [
        "source", "target", "union", "mask", "none"]
    assert set(info["DiTFMassiveActivationTransport"]["input"]["optional"]) == {
        "source_conditioning", "source_image", "vae", "spatial_mask"}
    assert info["DiTFMassiveActivationMask"]["output"] == ["MASK", "IMAGE"]


def test_flux_patches_run_with_ksampler(server):
    entry = server.run(flux_graph(server.files))
    assert succeeded(entry), messages(entry, "execution_error")
    for name in ("transport", "disruption", "guidance"):
        assert entry["outputs"][f"{name}_show"]["images"], name


def test_sd35_transport_from_a_reference_image_with_ksampler(server):
    graph = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": server.files["sd35"], "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": server.files["vae"]}},
        "image": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "positive": conditioning(3, 4096, 2048), "negative": conditioning(4, 4096, 2048),
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 2}},
        "transport": {"class_type": "DiTFMassiveActivationTransport", "inputs": {
            "model": ["unet", 0], "source_image": ["image", 0], "vae": ["vae", 0], **TRANSPORT}},
        "sample": sampled(["transport", 0], ["positive", 0], ["negative", 0], cfg=3.0),
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }
    entry = server.run(graph)
    assert succeeded(entry), messages(entry, "execution_error")
    assert len(entry["outputs"]["show"]["images"]) == 2


def test_mask_node_in_a_workflow(server):
    graph = {
        "flux": {"class_type": "DiTFTestTinyFluxLoader", "inputs": {"name": server.files["flux"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": server.files["vae"]}},
        "image": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "load": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["flux", 0], "vae": ["vae", 0]}},
        "mask": {"class_type": "DiTFMassiveActivationMask", "inputs": {
            "ditf_model": ["load", 0], "image": ["image", 0], "layer": -1, "top_k": 2, "t": 0.26, "ensemble": 1,
            "seed": 0, "resolution": 128}},
        "as_image": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["as_image", 0]}},
    }
    entry = server.run(graph)
    assert succeeded(entry), messages(entry, "execution_error")
    assert entry["outputs"]["show"]["images"] and entry["outputs"]["mask"]["images"]  # and the node's own preview


@pytest.mark.parametrize("node, widgets, message", [
    ("transport", {"strength": math.nan}, "strength must be a finite number"),
    ("transport", {"mask": "everywhere"}, "mask must be one of source, target, union, mask, none"),
    ("disruption", {"blocks": "1, two"}, "blocks: cannot read 'two'"),
    ("guidance", {"channels": "13; x"}, "channels must be 'auto' or channel numbers"),
])
def test_bad_widgets_are_refused_at_queue_time(server, node, widgets, message):
    graph = flux_graph(server.files)
    graph[node]["inputs"].update(widgets)
    status, response = server.queue(graph)
    assert message in str(response["node_errors"][node])
    if status == 200:  # the other branches validated and ran
        entry = server.wait(response["prompt_id"])
        assert f"{node}_show" not in entry["outputs"]
        server.post("/history", {"delete": [response["prompt_id"]]})  # no NaN left in /history for the frontend


@pytest.mark.parametrize("node, widgets, message", [
    ("transport", {"blocks": "0, 99"}, "blocks: this model has no block 99; use 0..5"),
    ("disruption", {"top_k": 500}, "top_k must be in 1..64"),
    ("guidance", {"layer": 40}, "layer 40 is out of range"),
])
def test_bad_input_is_reported_and_the_server_carries_on(server, node, widgets, message):
    graph = flux_graph(server.files)
    graph[node]["inputs"].update(widgets)
    entry = server.run(graph)
    errors = messages(entry, "execution_error")
    assert not succeeded(entry) and message in errors[0]["exception_message"], errors
    assert succeeded(server.run(flux_graph(server.files)))
