"""The massive-activation example workflows (example_workflows/ditf_ma_*.json) in ComfyUI's real frontend (headless
Chromium): each loads, converts to an API prompt that the server accepts once its model files are swapped for the
tiny test checkpoints, and the Detail Guidance on/off example runs end to end from the browser's own queue (the Flux
ones are checked up to validation: Flux text encoders cannot be made tiny)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from browser_harness import run_steps
from live_server import messages, succeeded
from test_frontend import (  # noqa: F401  (frontend: the shared browser fixture)
    LOAD_AND_CONVERT,
    QUEUE_AND_WAIT,
    frontend,
    queue_held,
    substitute,
    substitute_api,
    unexpected,
)

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "ditf_ma_prompt_interpolation": {"DiTFMassiveActivationTransport"},
    "ditf_ma_subject_reference": {"DiTFMassiveActivationTransport"},
    "ditf_ma_detail_guidance": {"DiTFDetailGuidance"},
    "ditf_ma_mask": {"DiTFLoadDiT", "DiTFMassiveActivationMask"},
}


def test_the_examples_exist_with_thumbnails_and_use_our_nodes():
    for name, nodes in EXAMPLES.items():
        workflow = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
        assert nodes <= {node["type"] for node in workflow["nodes"]}, name
        assert (ROOT / "example_workflows" / f"{name}.jpg").read_bytes()[:3] == b"\xff\xd8\xff", name


@pytest.fixture(scope="module")
def converted(frontend):
    """Each example loaded into the frontend and converted to an API prompt, in one browser session."""
    workflows = {name: json.loads((ROOT / "example_workflows" / f"{name}.json").read_text()) for name in sorted(EXAMPLES)}
    result = run_steps(frontend.url, [{"eval": LOAD_AND_CONVERT, "arg": workflow} for workflow in workflows.values()],
                       timeout=240)
    assert unexpected(result["errors"]) == []
    return {name: (workflows[name], output) for name, output in zip(workflows, result["results"])}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_loads_converts_and_is_accepted(frontend, converted, name):
    workflow, output = converted[name]
    assert len(output["types"]) == len(workflow["nodes"])
    prompt = output["output"]
    assert EXAMPLES[name] <= {node["class_type"] for node in prompt.values()}
    accepted = queue_held(frontend, substitute_api(prompt, frontend.files))
    assert accepted["node_errors"] == {}, accepted


def test_detail_guidance_example_runs_from_the_browser_queue(frontend):
    workflow = substitute(json.loads((ROOT / "example_workflows" / "ditf_ma_detail_guidance.json").read_text()),
                          frontend.files)
    for node in workflow["nodes"]:  # tiny sizes for the CPU: 128 px, 2 steps
        if node["type"] == "EmptySD3LatentImage":
            node["widgets_values"][:2] = [128, 128]
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 2
    started = time.monotonic()
    result = run_steps(frontend.url, [{"eval": QUEUE_AND_WAIT, "arg": workflow}], timeout=200)
    assert unexpected(result["errors"]) == []
    entry = result["results"][0]["entry"]
    assert succeeded(entry), messages(entry, "execution_error")
    previews = [outputs["images"] for outputs in entry["outputs"].values() if outputs.get("images")]
    assert len(previews) == 2  # Detail Guidance on, and off
    print(f"Detail Guidance example queued from the frontend: success in {time.monotonic() - started:.1f} s")
