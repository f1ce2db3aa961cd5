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

from browser_harness import BROWSER_MODES, open_frontend, unexpected, unexpected_console_errors, unexpected_responses
from live_server import PACK_DIR, messages, succeeded

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
OUR_NODES = {"DiTFLoadDiT", "DiTFExtractFeatures"}
TINY = {"ensemble": 1, "resolution": 256}  # the run from the browser: the example's Extract settings made quick

LOAD_AND_CONVERT = r"""async (workflow) => {
  await app.loadGraphData(workflow);
  const { output } = await app.graphToPrompt();
  return { output, types: app.graph.nodes.map((node) => node.type) };
}"""
# Nodes 2.0 draws nodes as DOM elements: every node of the workflow is there, with our nodes' widgets.
VUE_NODES = r"""() => [...document.querySelectorAll("[data-node-id]")].length"""

QUEUE_AND_WAIT = r"""async ({workflow, tiny}) => {
  const history = async () => (await fetch("/history")).json();
  const before = new Set(Object.keys(await history()));
  await app.loadGraphData(workflow);
  for (const node of app.graph.nodes.filter((n) => n.type === "DiTFExtractFeatures")) {  // quick settings, by name
    for (const [name, value] of Object.entries(tiny)) node.widgets.find((w) => w.name === name).value = value;
  }
  await app.queuePrompt(0, 1);
  for (let i = 0; i < 600; i++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const all = await history();
    const fresh = Object.keys(all).filter((id) => !before.has(id));
    const entry = fresh.length ? all[fresh[0]] : null;
    if (entry && ["success", "error"].includes(entry.status?.status_str)) {
      await new Promise((resolve) => setTimeout(resolve, 500));  // let the UI draw the previews
      const extract = app.graph.nodes.find((node) => node.type === "DiTFExtractFeatures");
      return { entry, previews: app.nodeOutputs?.[String(extract.id)]?.images?.length ?? 0 };
    }
  }
  throw new Error("the queued workflow did not finish in 150 s");
}"""


@pytest.fixture(scope="module", params=list(BROWSER_MODES))
def frontend(request):
    return open_frontend(request, request.param)


@pytest.fixture(scope="module")
def converted(frontend):
    """Every example loaded and converted to an API prompt in one browser session of this frontend and mode."""
    steps = []
    for path in WORKFLOWS:
        steps += [{"eval": LOAD_AND_CONVERT, "arg": json.loads(path.read_text())}, {"eval": VUE_NODES}]
    started = time.monotonic()
    result = frontend.run(steps)
    result["seconds"] = time.monotonic() - started
    print(f"{frontend.mode}: {len(WORKFLOWS)} examples loaded and converted in {result['seconds']:.1f} s")
    result["workflows"] = {path.name: result["results"][2 * i:2 * i + 2] for i, path in enumerate(WORKFLOWS)}
    return result


def test_there_are_example_workflows():
    assert [path.name for path in WORKFLOWS] == ["ditf_correspondence_warp.json", "ditf_flux_features.json",
                                                 "ditf_inspector_discard.json", "ditf_sd35_features.json"]
    for path in WORKFLOWS:
        types = {node["type"] for node in json.loads(path.read_text())["nodes"]}
        assert OUR_NODES <= types, path.name


def test_examples_are_offered_as_templates(server):
    assert sorted(server.get("/workflow_templates")[PACK_DIR]) == [path.stem for path in WORKFLOWS]
    for path in WORKFLOWS:  # the template browser shows <name>.jpg as the thumbnail
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


def test_examples_load_without_errors(frontend, converted):
    assert unexpected(converted["errors"]) == []
    assert unexpected_responses(converted, frontend.server.url) == []
    assert unexpected_console_errors(converted) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_loads_converts_and_is_accepted(frontend, converted, path):
    workflow = json.loads(path.read_text())
    assert path.name in converted["workflows"], f"the browser session stopped early: {converted['errors']}"
    loaded, dom_nodes = converted["workflows"][path.name]
    assert len(loaded["types"]) == len(workflow["nodes"])
    assert dom_nodes == (len(workflow["nodes"]) if frontend.vue_nodes else 0)
    prompt = loaded["output"]
    classes = {node["class_type"] for node in prompt.values()}
    assert OUR_NODES <= classes
    extract = next(node["inputs"] for node in prompt.values() if node["class_type"] == "DiTFExtractFeatures")
    assert {"ditf_model", "image", "layer", "t", "ensemble", "seed", "resolution", "discard", "mode"} <= set(extract)
    assert (extract["layer"], extract["t"], extract["ensemble"], extract["resolution"], extract["seed"]) == (-1, 0.26, 8, 640, 0)
    accepted = queue_held(frontend.server, substitute_api(prompt, frontend.server.files))
    assert accepted["node_errors"] == {}, accepted


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


@pytest.fixture(scope="module", params=["bundled-classic", "newest-nodes2"])
def run_frontend(request):
    """Queueing is the same in both modes of a frontend: one run per frontend (the points tests run in every mode)."""
    return open_frontend(request, request.param)


def test_sd35_example_runs_from_the_browser_queue(run_frontend, tmp_path):
    frontend = run_frontend
    workflow = substitute(json.loads((ROOT / "example_workflows" / "ditf_sd35_features.json").read_text()),
                          frontend.server.files)
    started = time.monotonic()
    shot = tmp_path / "sd35_example.png"
    steps = [{"eval": QUEUE_AND_WAIT, "arg": {"workflow": workflow, "tiny": TINY}}, {"screenshot": str(shot)}]
    result = frontend.run(steps, timeout=200)
    assert unexpected(result["errors"]) == []
    assert unexpected_responses(result, frontend.server.url) == []
    run = result["results"][0]
    errors = messages(run["entry"], "execution_error")
    assert succeeded(run["entry"]), errors
    assert run["previews"] == 2  # the Extract node shows its PCA preview of both images in the UI
    print(f"{frontend.mode}: SD3.5 example queued from the frontend: success in {time.monotonic() - started:.1f} s; "
          f"screenshot {shot}")
