"""example_workflows/ in ComfyUI's real frontend (headless Chromium): each loads, converts to an API prompt that the
server accepts once its model files are swapped for the tiny test checkpoints, and the SD3.5 one runs end to end
from the browser's own queue. Workflows for real Flux files are checked up to validation: their text encoders
cannot be made tiny, so their prompt is accepted while a test gate holds the queue, then withdrawn."""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path

import pytest

from browser_harness import run_steps, unavailable
from live_server import PACK_DIR, messages, succeeded

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
ALL_WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
# The feature-extraction examples; the massive-activation ones (ditf_ma_*) are checked in test_transport_frontend.py.
WORKFLOWS = [path for path in ALL_WORKFLOWS if not path.stem.startswith("ditf_ma_")]
OUR_NODES = {"DiTFLoadDiT", "DiTFExtractFeatures"}
# Page errors the 1.27.10 frontend raises on a fresh profile with no custom nodes at all (checked by hand).
KNOWN_FRONTEND_ERRORS = ("Cannot read properties of undefined (reading 'id')",)


def unexpected(errors: list[str]) -> list[str]:
    return [error for error in errors if not any(known in error for known in KNOWN_FRONTEND_ERRORS)]

LOAD_AND_CONVERT = r"""async (workflow) => {
  await app.loadGraphData(workflow);
  const { output } = await app.graphToPrompt();
  return { output, types: app.graph.nodes.map((node) => node.type) };
}"""

QUEUE_AND_WAIT = r"""async (workflow) => {
  const history = async () => (await fetch("/history")).json();
  const before = new Set(Object.keys(await history()));
  await app.loadGraphData(workflow);
  await app.queuePrompt(0, 1);
  for (let i = 0; i < 600; i++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const all = await history();
    const fresh = Object.keys(all).filter((id) => !before.has(id));
    const entry = fresh.length ? all[fresh[0]] : null;
    if (entry && ["success", "error"].includes(entry.status?.status_str)) {
      await new Promise((resolve) => setTimeout(resolve, 500));  // let the UI draw the previews
      const extract = app.graph.nodes.find((node) => node.type === "DiTFExtractFeatures");
      return { entry, previews: extract ? app.nodeOutputs?.[String(extract.id)]?.images?.length ?? 0 : 0 };
    }
  }
  throw new Error("the queued workflow did not finish in 150 s");
}"""


@pytest.fixture(scope="module")
def frontend(server):
    reason = unavailable()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    server.post("/settings/Comfy.TutorialCompleted", True)  # no template dialog over the canvas
    return server


def test_there_are_example_workflows():
    assert [path.name for path in WORKFLOWS] == ["ditf_correspondence_warp.json", "ditf_flux_features.json",
                                                 "ditf_inspector_discard.json", "ditf_sd35_features.json"]
    for path in WORKFLOWS:
        types = {node["type"] for node in json.loads(path.read_text())["nodes"]}
        assert OUR_NODES <= types, path.name


def test_examples_are_offered_as_templates(server):
    assert sorted(server.get("/workflow_templates")[PACK_DIR]) == [path.stem for path in ALL_WORKFLOWS]
    for path in ALL_WORKFLOWS:  # the template browser shows <name>.jpg as the thumbnail
        assert server.get(f"/api/workflow_templates/{PACK_DIR}/{path.stem}.jpg")[:3] == b"\xff\xd8\xff"


def substitute(workflow: dict, files: dict) -> dict:
    """The UI workflow with its model file names swapped for the tiny test checkpoints."""
    workflow = copy.deepcopy(workflow)
    names = {"CheckpointLoaderSimple": [files["checkpoint"]], "UNETLoader": [files["sd35"]],
             "DualCLIPLoader": [files["clip_l"], files["clip_l"]], "VAELoader": [files["vae"]]}
    for node in workflow["nodes"]:
        for index, name in enumerate(names.get(node["type"], [])):
            node["widgets_values"][index] = name
    return workflow


def substitute_api(prompt: dict, files: dict) -> dict:
    fields = {"unet_name": files["sd35"], "clip_name1": files["clip_l"], "clip_name2": files["clip_l"],
              "vae_name": files["vae"], "ckpt_name": files["checkpoint"]}
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        node["inputs"].update({k: v for k, v in fields.items() if k in node["inputs"]})
    return prompt


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_loads_converts_and_is_accepted(frontend, path):
    workflow = json.loads(path.read_text())
    started = time.monotonic()
    result = run_steps(frontend.url, [{"eval": LOAD_AND_CONVERT, "arg": workflow}])
    assert unexpected(result["errors"]) == []
    converted = result["results"][0]
    assert len(converted["types"]) == len(workflow["nodes"])
    prompt = converted["output"]
    classes = {node["class_type"] for node in prompt.values()}
    assert OUR_NODES <= classes
    extract = next(node["inputs"] for node in prompt.values() if node["class_type"] == "DiTFExtractFeatures")
    assert {"ditf_model", "image", "layer", "t", "ensemble", "seed", "resolution", "discard", "mode"} <= set(extract)
    assert (extract["layer"], extract["t"], extract["ensemble"], extract["resolution"], extract["seed"]) == (-1, 0.26, 8, 640, 0)
    accepted = queue_held(frontend, substitute_api(prompt, frontend.files))
    assert accepted["node_errors"] == {}, accepted
    print(f"{path.name}: loaded, converted and accepted in {time.monotonic() - started:.1f} s")


def queue_held(server, prompt: dict) -> dict:
    """POST a prompt while a test gate holds the queue, then withdraw it: validation without execution."""
    token = uuid.uuid4().hex
    status, gate = server.queue({"gate": {"class_type": "DiTFTestGate", "inputs": {"token": token, "timeout": 60.0}}})
    assert status == 200
    deadline = time.monotonic() + 30
    while not server.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        status, response = server.queue(prompt)
        assert status == 200, response
        server.post("/queue", {"delete": [response["prompt_id"]]})
    finally:
        (server.base_dir / f"gate_{token}").touch()
    server.wait(gate["prompt_id"])
    assert response["prompt_id"] not in server.get("/history")  # withdrawn: it never ran
    return response


def test_sd35_example_runs_from_the_browser_queue(frontend, tmp_path):
    workflow = substitute(json.loads((ROOT / "example_workflows" / "ditf_sd35_features.json").read_text()), frontend.files)
    started = time.monotonic()
    shot = tmp_path / "sd35_example.png"
    result = run_steps(frontend.url, [{"eval": QUEUE_AND_WAIT, "arg": workflow}, {"screenshot": str(shot)}], timeout=200)
    assert unexpected(result["errors"]) == []
    run = result["results"][0]
    errors = messages(run["entry"], "execution_error")
    assert succeeded(run["entry"]), errors
    assert run["previews"] == 2  # the Extract node shows its PCA preview of both images in the UI
    print(f"SD3.5 example queued from the frontend: success in {time.monotonic() - started:.1f} s; screenshot {shot}")
