"""The massive-activation example workflows (example_workflows/ditf_ma_*.json) in ComfyUI's real frontend (headless
Chromium), on the bundled frontend (classic canvas) and the newest one (Nodes 2.0): each loads, converts to an API
prompt that the server accepts once its model files are swapped for the tiny test checkpoints, and the Detail
Guidance on/off example runs end to end from the browser's own queue (the Flux ones are checked up to validation:
Flux text encoders cannot be made tiny). One browser session per frontend does all of it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from browser_harness import open_frontend, unexpected, unexpected_console_errors, unexpected_responses
from live_server import messages, succeeded
from test_frontend import LOAD_AND_CONVERT, QUEUE_AND_WAIT, VUE_NODES, queue_held, substitute, substitute_api

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "ditf_ma_detail_guidance": {"DiTFDetailGuidance"},
    "ditf_ma_mask": {"DiTFLoadDiT", "DiTFMassiveActivationMask"},
    "ditf_ma_prompt_interpolation": {"DiTFMassiveActivationTransport"},
    "ditf_ma_subject_reference": {"DiTFMassiveActivationTransport"},
}
RUN = "ditf_ma_detail_guidance"  # the SD3.5 one: it runs on the tiny checkpoints


def load(name: str) -> dict:
    return json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())


def test_the_examples_exist_with_thumbnails_and_use_our_nodes():
    for name, nodes in EXAMPLES.items():
        assert nodes <= {node["type"] for node in load(name)["nodes"]}, name
        assert (ROOT / "example_workflows" / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff", name


def tiny_run(workflow: dict) -> dict:
    """The Detail Guidance example at CPU sizes: 128 px, 2 steps."""
    for node in workflow["nodes"]:
        if node["type"] == "EmptySD3LatentImage":
            node["widgets_values"][:2] = [128, 128]
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 2
    return workflow


@pytest.fixture(scope="module", params=["bundled-classic", "newest-nodes2"])
def session(request):
    """One browser session per frontend: every example loaded and converted, then the Detail Guidance one queued."""
    frontend = open_frontend(request, request.param)
    steps = []
    for name in EXAMPLES:
        steps += [{"eval": LOAD_AND_CONVERT, "arg": load(name)}, {"eval": VUE_NODES}]
    steps.append({"eval": QUEUE_AND_WAIT, "arg": {"workflow": tiny_run(substitute(load(RUN), frontend.server.files)),
                                                  "tiny": {}}})
    started = time.monotonic()
    result = frontend.run(steps, timeout=300)
    print(f"{frontend.mode}: {len(EXAMPLES)} massive-activation examples converted and {RUN} run in "
          f"{time.monotonic() - started:.1f} s")
    result["examples"] = {name: result["results"][2 * i:2 * i + 2] for i, name in enumerate(EXAMPLES)}
    return frontend, result


def test_the_session_has_no_errors(session):
    frontend, result = session
    assert unexpected(result["errors"]) == []
    assert unexpected_responses(result, frontend.server.url) == []
    assert unexpected_console_errors(result) == []


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_loads_converts_and_is_accepted(session, name):
    frontend, result = session
    assert name in result["examples"], f"the browser session stopped early: {result['errors']}"
    (loaded, dom_nodes), workflow = result["examples"][name], load(name)
    assert len(loaded["types"]) == len(workflow["nodes"])
    assert dom_nodes == (len(workflow["nodes"]) if frontend.vue_nodes else 0)
    prompt = loaded["output"]
    assert EXAMPLES[name] <= {node["class_type"] for node in prompt.values()}
    accepted = queue_held(frontend.server, substitute_api(prompt, frontend.server.files))
    assert accepted["node_errors"] == {}, accepted


def test_detail_guidance_example_runs_from_the_browser_queue(session):
    _, result = session
    assert len(result["results"]) == 2 * len(EXAMPLES) + 1, f"the browser session stopped early: {result['errors']}"
    entry = result["results"][-1]["entry"]
    assert succeeded(entry), messages(entry, "execution_error")
    previews = [outputs["images"] for outputs in entry["outputs"].values() if outputs.get("images")]
    assert len(previews) == 2  # Detail Guidance on, and off
