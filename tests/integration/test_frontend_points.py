"""The point editor and live correspondence explorer in ComfyUI's real frontend (headless Chromium, real mouse input):
the extension loads; clicks add, drag moves and right-click deletes points, which are saved in the serialized workflow
and sent in the prompt; a run queued from the browser shows the matched points in the point colours; hovering the
source draws the route's similarity heatmap over the target; removing the node removes the editor's listeners; the
node help panel shows the pack's docs.

One browser session runs every step (module fixture); the tests check its parts. Screenshots go to the test's temp
folder (and to DITF_SCREENSHOT_DIR when set, e.g. docs/ for the README)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser_harness import run_steps, unavailable
from live_server import INPUT_IMAGES, PACK_DIR, messages, succeeded
from test_frontend import unexpected

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
SCALE = 0.9  # graph zoom during the test: pointer positions must go through the canvas transform
P1, P1_MOVED, P2, P3 = (100, 80), (120, 100), (250, 200), (300, 60)  # source pixels (the image is 384 x 288)
EXTRACT = dict(layer=-1, t=0.26, ensemble=1, seed=0, resolution=256, discard="auto", mode="ditf")


def workflow(files: dict) -> dict:
    """API prompt: tiny SD3.5 through the stock loaders -> Load DiT -> Extract x 2 -> Correspondence Match."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": files["sd35"], "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae"]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[0]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": INPUT_IMAGES[1]}},
        "5": {"class_type": "DiTFLoadDiT", "inputs": {"model": ["1", 0], "vae": ["2", 0]}},
        "6": {"class_type": "DiTFExtractFeatures", "inputs": {"ditf_model": ["5", 0], "image": ["3", 0], **EXTRACT}},
        "7": {"class_type": "DiTFExtractFeatures", "inputs": {"ditf_model": ["5", 0], "image": ["4", 0], **EXTRACT}},
        "8": {"class_type": "DiTFCorrespondenceMatch", "inputs": {
            "source": ["6", 0], "target": ["7", 0], "source_image": ["3", 0], "target_image": ["4", 0],
            "points": "[]", "mode": "fast", "max_points": 8, "cycle_tolerance": 2.0}},
    }


# --- page functions (run in the browser by the harness) -----------------------------------------------------------
SETUP = r"""async ({prompt, pack, scale}) => {
  window.__until = async (predicate, timeout = 30000) => {
    const started = performance.now();
    while (!predicate()) {
      if (performance.now() - started > timeout) throw new Error(`timed out waiting for ${predicate}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  window.__box = () => {  // the node's rectangle on screen (title included), for screenshots
    const title = LiteGraph.NODE_TITLE_HEIGHT;  // (getBounding() lags behind a node that just grew)
    const [x, y, width, height] = [__node.pos[0], __node.pos[1] - title, __node.size[0], __node.size[1] + title];
    const canvas = app.canvas.canvas.getBoundingClientRect();
    const { scale, offset } = app.canvas.ds;
    return { x: canvas.left + (x + offset[0]) * scale - 4, y: canvas.top + (y + offset[1]) * scale - 4,
             width: width * scale + 8, height: height * scale + 8 };
  };
  window.__focus = (node) => {  // the node at a known zoom, near the top left of the canvas
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [-node.pos[0] + 100, -node.pos[1] + 120];
    app.graph.setDirtyCanvas(true, true);
  };
  await app.loadApiJson(prompt, "ditf-points-test");
  const node = app.graph.nodes.find((n) => n.type === "DiTFCorrespondenceMatch");
  window.__node = node;
  __focus(node);
  const editor = node.ditfEditor;
  await __until(() => editor?.images.source?.ready && editor?.images.target?.ready);
  const palette = await import(`/extensions/${pack}/lib/palette.js`);
  return {
    extensions: app.extensions.map((e) => e.name).filter((name) => name.startsWith("DiTF")),
    widgets: node.widgets.map((w) => ({
      name: w.name, type: w.type, hidden: !!w.hidden, serialize: w.serialize !== false,
    })),
    sources: [editor.images.source.url, editor.images.target.url],
    status: editor.status.textContent,
    tooltip: editor.canvas.title,
    colours: [...Array(12).keys()].map(palette.pointColour),
    heat: [0, 0.25, 0.5, 0.75, 1].map(palette.heatColour),
  };
}"""

# Real mouse input at the editor's own pixel -> screen mapping.
EDIT = r"""({p1, p1Moved, p2, p3}) => {
  const e = __node.ditfEditor;
  const at = (p) => e.clientPoint("source", ...p);
  return [
    {click: at(p1)}, {click: at(p2)},
    {click: e.clientPoint("target", 100, 100)},  // the target panel is not editable
    {move: at(p1)}, {down: "left"}, {move: at(p1Moved), steps: 6}, {up: "left"},
    {click: at(p3)}, {click: at(p3), button: "right"},
    {move: [5, 500]}, {pause: 100},
  ];
}"""

AFTER_EDIT = r"""async () => {
  const node = __node;
  const old = node.ditfEditor;
  const saved = app.graph.serialize();
  const { output } = await app.graphToPrompt();
  const state = {
    points: old.points,
    widget: node.widgets.find((w) => w.name === "points").value,
    workflowValues: saved.nodes.find((n) => n.type === "DiTFCorrespondenceMatch").widgets_values,
    promptPoints: output[String(node.id)].inputs.points,
    promptKeys: Object.keys(output[String(node.id)].inputs).sort(),
  };
  // the saved workflow loaded again (as a shared workflow is): the new editor shows the points, the old one is gone
  const oldCanvas = old.canvas;
  await app.loadGraphData(saved);
  const fresh = app.graph.nodes.find((n) => n.type === "DiTFCorrespondenceMatch");
  window.__node = fresh;
  __focus(fresh);
  await __until(() => fresh.ditfEditor?.images.source?.ready);
  return {
    ...state,
    reloaded: fresh.ditfEditor.points,
    old: { listenersAborted: old.listeners.signal.aborted, explorerAborted: old.explorer.abort.signal.aborted,
           canvasInDocument: document.contains(oldCanvas), nodeEditor: node.ditfEditor },
  };
}"""

QUEUE = r"""async () => {
  const editor = __node.ditfEditor;
  const history = async () => (await fetch("/history")).json();
  const before = new Set(Object.keys(await history()));
  await app.queuePrompt(0, 1);
  let entry = null;
  for (let i = 0; i < 600 && !["success", "error"].includes(entry?.status?.status_str); i++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const all = await history();
    entry = all[Object.keys(all).find((id) => !before.has(id))] ?? null;
  }
  if (entry?.status?.status_str !== "success") return { entry, match: null };
  await __until(() => editor.match !== null);
  await __until(() => editor.images.source?.ready && editor.images.target?.ready);
  await new Promise((resolve) => setTimeout(resolve, 500));  // let the canvas draw the preview too
  return { match: editor.match, matches: editor.matches.length, status: editor.status.textContent, entry };
}"""

# Screen positions and canvas pixels of the drawn markers, and the node's rectangle for the screenshot.
DRAWN = r"""() => {
  const node = __node, e = node.ditfEditor;
  const pixel = ([x, y]) => {
    const rect = e.canvas.getBoundingClientRect();
    const ratio = e.canvas.width / rect.width;
    const [cx, cy] = [Math.round((x - rect.left) * ratio), Math.round((y - rect.top) * ratio)];
    return [...e.canvas.getContext("2d").getImageData(cx, cy, 1, 1).data.slice(0, 3)];
  };
  const source = e.points.map((p) => e.clientPoint("source", p.x, p.y));
  const target = e.match.target.points.map(([x, y]) => e.clientPoint("target", x, y));
  const r = e.canvas.getBoundingClientRect();
  return { source, target, sourcePixels: source.map(pixel), targetPixels: target.map(pixel), box: __box(),
           targetPanel: [e.clientPoint("target", 0, 0),
                         e.clientPoint("target", e.match.target.width - 1, e.match.target.height - 1)],
           canvas: [r.left, r.top, r.width, r.height] };
}"""
CLIP = "() => __box()"

HOVER = r"""({p2}) => {
  const e = __node.ditfEditor;
  const [x, y] = e.clientPoint("source", ...p2);
  return [{move: [x - 30, y + 20]}, {move: [x + 1, y], steps: 8}, {pause: 300}];
}"""

EXPLORED = r"""async () => {
  const e = __node.ditfEditor;
  await __until(() => e.explored?.result && e.hover?.index === 1 && e.explored.xy[0] === e.points[1].x);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const { heat, ...result } = e.explored.result;
  return { hover: e.hover, result, heatBytes: atob(heat).length, latencies: e.explorer.latencies,
           status: e.status.textContent };
}"""

LEAVE = r"""() => [{move: [5, 500], steps: 2}, {pause: 200}]"""

REMOVE = r"""async ({pack}) => {
  const node = __node, e = node.ditfEditor;
  const left = { hover: e.hover, explored: e.explored };
  // a malformed request from the page itself
  const bad = await fetch("/api/ditf/explorer/similarity",
                          { method: "POST", body: '{"explorer": "x", "x": NaN, "y": 1}' });
  const badBody = await bad.json();
  let requests = 0;
  const fetchBefore = window.fetch;
  window.fetch = (...args) => {
    if (String(args[0]).includes("/ditf/explorer/")) requests++;
    return fetchBefore(...args);
  };
  const canvas = e.canvas;
  const match = e.match;
  app.graph.remove(node);
  const r = canvas.getBoundingClientRect();
  for (const type of ["pointermove", "pointerdown", "pointerup", "contextmenu"]) {
    const at = { clientX: r.left + 20, clientY: r.top + 40, button: 0, bubbles: true };
    canvas.dispatchEvent(new PointerEvent(type, at));
  }
  await new Promise((resolve) => setTimeout(resolve, 300));
  window.fetch = fetchBefore;
  return { left, bad: [bad.status, badBody], nodeEditor: node.ditfEditor, listenersAborted: e.listeners.signal.aborted,
           explorerAborted: e.explorer.abort.signal.aborted, hoverAfter: e.hover, pointsAfter: e.points.length,
           requests, canvasInDocument: document.contains(canvas), matchKept: e.match === match };
}"""


# A node with nothing connected: a placeholder instead of the image; unreadable JSON is reported, not overwritten.
FRESH = r"""async () => {
  const node = LiteGraph.createNode("DiTFCorrespondenceMatch");
  app.graph.add(node);
  const e = node.ditfEditor;
  const drawn = { status: e.status.textContent, images: [e.images.source, e.images.target] };
  const widget = node.widgets.find((w) => w.name === "points");
  widget.value = '[{"x": 1}]';
  e.sync();
  const r = e.canvas.getBoundingClientRect();
  const at = { clientX: r.left + 30, clientY: r.top + 60, button: 0, bubbles: true };
  e.canvas.dispatchEvent(new PointerEvent("pointerdown", at));
  const result = { ...drawn, error: e.status.textContent, value: widget.value, points: e.points.length };
  app.graph.remove(node);
  return result;
}"""


# The node help panel (selection toolbox -> info) renders the pack's web/docs/<node_id>.md.
HELP = r"""async () => {
  const node = app.graph.nodes.find((n) => n.type === "DiTFExtractFeatures");
  app.canvas.selectNode(node);
  app.graph.setDirtyCanvas(true, true);
  await __until(() => document.querySelector('[data-testid="info-button"]'), 10000);
  document.querySelector('[data-testid="info-button"]').click();
  const phrase = "Extract the source and the target with the same model";
  await __until(() => document.body.innerText.includes(phrase), 10000);
  return true;
}"""


@pytest.fixture(scope="module")
def session(server, tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    server.post("/settings/Comfy.TutorialCompleted", True)
    shots = tmp_path_factory.mktemp("screenshots")
    editor_shot, explorer_shot = shots / "point_editor.png", shots / "correspondence_explorer.png"
    steps = [
        {"eval": SETUP, "arg": {"prompt": workflow(server.files), "pack": PACK_DIR, "scale": SCALE}},
        {"mouse": EDIT, "arg": {"p1": P1, "p1Moved": P1_MOVED, "p2": P2, "p3": P3}},
        {"eval": AFTER_EDIT},
        {"eval": QUEUE},
        {"eval": DRAWN},
        {"screenshot": str(editor_shot), "clip": CLIP},
        {"mouse": HOVER, "arg": {"p2": P2}},
        {"eval": EXPLORED},
        {"eval": DRAWN},
        {"screenshot": str(explorer_shot), "clip": CLIP},
        {"mouse": LEAVE},
        {"eval": REMOVE, "arg": {"pack": PACK_DIR}},
        {"eval": FRESH},
        {"eval": HELP},
    ]
    started = time.monotonic()
    result = run_steps(server.url, steps, timeout=220, viewport=(1400, 1100))
    result["seconds"] = time.monotonic() - started
    names = ["setup", "edit", "after_edit", "queue", "drawn", "editor_shot", "hover", "explored", "hover_drawn",
             "explorer_shot", "leave", "remove", "fresh", "help"]
    result["steps"] = dict(zip(names, result["results"]))
    result["shots"] = {"editor": editor_shot, "explorer": explorer_shot}
    print(f"point editor browser session: {result['seconds']:.1f} s; screenshots {editor_shot}, {explorer_shot}")
    target = os.environ.get("DITF_SCREENSHOT_DIR")
    if target and explorer_shot.exists():
        for shot in (editor_shot, explorer_shot):
            shutil.copy(shot, Path(target) / shot.name)
    return result


def step(session, name):
    """A step's result; a failed session names the harness error instead of a KeyError."""
    errors = unexpected(session["errors"])
    assert name in session["steps"], f"the browser session stopped before '{name}': {errors}"
    return session["steps"][name]


def near(a, b, tolerance):
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


# --- the extension loads -------------------------------------------------------------------------------------------
def test_extension_loads_without_errors(server, session):
    listed = server.get("/extensions")
    assert f"/extensions/{PACK_DIR}/ditf_points.js" in listed
    setup = step(session, "setup")
    assert setup["extensions"] == ["DiTF.PointsEditor"]
    widgets = {w["name"]: w for w in setup["widgets"]}
    assert widgets["points"]["hidden"] and widgets["points"]["serialize"]  # the JSON is kept, the editor shows it
    assert widgets["points_editor"]["type"] == "ditf_points" and not widgets["points_editor"]["serialize"]
    # before any run the editor shows the connected LoadImage pictures
    assert all(f"filename={name}" in url and "type=input" in url for name, url in zip(INPUT_IMAGES, setup["sources"]))
    assert "click: add a point" in setup["status"] and "right-click: delete" in setup["tooltip"]
    assert unexpected(session["errors"]) == []
    ours = [line for line in session["failed"] if f"/extensions/{PACK_DIR}/" in line or "/ditf/" in line]
    # the deliberate bad request, and the help panel asking for a locale page before the plain one (by design)
    assert ours == ["400 " + server.url + "/api/ditf/explorer/similarity",
                    f"404 {server.url}/extensions/{PACK_DIR}/docs/DiTFExtractFeatures/en.md"]
    assert not [line for line in session["console"] if line.startswith(("error", "warning")) and "DiTF" in line]


def test_palette_is_the_python_one(session):
    from ditf_core.matching.draw import point_colours

    setup = step(session, "setup")
    assert [tuple(c) for c in setup["colours"]] == point_colours(12)
    assert setup["heat"] == [[0, 0, 255], [63, 127, 191], [127, 255, 127], [191, 127, 63], [255, 0, 0]]


# --- points: click, drag, right-click; saved with the workflow and the prompt -------------------------------------
def test_clicks_drag_and_right_click_edit_the_points(session):
    state = step(session, "after_edit")
    points = [(p["x"], p["y"]) for p in state["points"]]
    assert len(points) == 2, points  # P1 (moved) and P2; the target click added none; P3 was deleted
    assert near(points[0], P1_MOVED, 1) and near(points[1], P2, 1), points
    assert all(isinstance(v, int) for p in points for v in p)  # integer pixels (pixel centres)


def test_points_are_saved_in_the_workflow_and_sent_in_the_prompt(session):
    import json

    state = step(session, "after_edit")
    stored = json.loads(state["widget"])
    assert stored == state["points"] and list(stored[0]) == ["x", "y"]  # KJNodes PointsEditor JSON
    assert state["workflowValues"][0] == state["widget"] and len(state["workflowValues"]) == 4  # no editor value
    assert json.loads(state["promptPoints"]) == stored
    assert state["promptKeys"] == sorted(["source", "target", "source_image", "target_image", "points", "mode",
                                          "max_points", "cycle_tolerance"])


def test_a_loaded_workflow_restores_the_points_and_disposes_the_old_editor(session):
    state = step(session, "after_edit")
    assert state["reloaded"] == state["points"]
    assert state["old"] == {"listenersAborted": True, "explorerAborted": True, "canvasInDocument": False,
                            "nodeEditor": None}


# --- a queued run shows the matched points ------------------------------------------------------------------------
def test_queued_run_shows_matched_points_in_the_point_colours(session):
    from ditf_core.matching.draw import point_colours

    run = step(session, "queue")
    assert run["entry"] and succeeded(run["entry"]), messages(run["entry"], "execution_error") if run["entry"] else run
    match = run["match"]
    assert run["matches"] == 1 and match["mode"] == "fast" and len(match["explorer"]) == 32
    assert near(match["source"]["points"][0], P1_MOVED, 1) and near(match["source"]["points"][1], P2, 1)
    assert len(match["target"]["points"]) == len(match["target"]["scores"]) == 2
    assert "matched (fast)" in run["status"]
    drawn = step(session, "drawn")
    colours = point_colours(2)
    for i in range(2):  # the marker centres carry point i's colour on both panels (canvas pixels)
        assert near(drawn["sourcePixels"][i], colours[i], 2), (i, drawn["sourcePixels"][i])
        assert near(drawn["targetPixels"][i], colours[i], 2), (i, drawn["targetPixels"][i])
    # and they are on screen: the screenshot shows the same colours at the same places
    shot = Image.open(session["shots"]["editor"]).convert("RGB")
    box = drawn["box"]
    for i, (x, y) in enumerate(drawn["source"] + drawn["target"]):
        pixel = shot.getpixel((round(x - box["x"]), round(y - box["y"])))
        assert near(pixel, colours[i % 2], 12), (i, pixel)


# --- hover: the live explorer's heatmap ---------------------------------------------------------------------------
def test_hover_draws_the_similarity_heatmap_with_the_best_match(session):
    explored = step(session, "explored")
    match = step(session, "queue")["match"]
    result = explored["result"]
    assert explored["hover"]["index"] == 1
    assert result["explorer"] == match["explorer"] and result["source"] == match["source"]["points"][1]
    assert explored["heatBytes"] == result["width"] * result["height"] == match["grid"][0] * match["grid"][1]
    # the explorer's best match is the node's "fast" match of the same point, and its score
    assert near(result["best"], match["target"]["points"][1], 0.02)
    assert abs(result["score"] - match["target"]["scores"][1]) < 1e-3
    latencies = explored["latencies"]
    print(f"explorer answers seen by the browser: {len(latencies)}, max {max(latencies):.1f} ms, "
          f"last {latencies[-1]:.1f} ms (HTTP round trip from the page)")
    assert max(latencies) < 1000
    # on screen, the target panel is covered by the heatmap: it differs from the matches-only picture
    before = Image.open(session["shots"]["editor"]).convert("RGB")
    after = Image.open(session["shots"]["explorer"]).convert("RGB")
    drawn = step(session, "hover_drawn")
    (x0, y0), (x1, y1) = drawn["targetPanel"]
    box = drawn["box"]
    crop = tuple(round(v) for v in (x0 - box["x"] + 8, y0 - box["y"] + 8, x1 - box["x"] - 8, y1 - box["y"] - 8))
    a = np.asarray(before.crop(crop), dtype=np.int32)
    b = np.asarray(after.crop(crop), dtype=np.int32)
    changed = float((np.abs(a - b).sum(-1) > 60).mean())
    assert changed > 0.5, changed
    # the ramp: red where the heat peaks, blue where it is lowest (the overlay is half transparent)
    red, blue = b[..., 0] - b[..., 2], b[..., 2] - b[..., 0]
    assert (red > 60).mean() > 0.01 and (blue > 60).mean() > 0.01


def test_leaving_the_source_hides_the_heatmap(session):
    assert step(session, "remove")["left"] == {"hover": None, "explored": None}


# --- node removal ---------------------------------------------------------------------------------------------------
def test_removing_the_node_removes_the_editors_listeners(session):
    removed = step(session, "remove")
    assert removed["bad"][0] == 400 and "NaN" in removed["bad"][1]["error"]  # a malformed request from the page
    assert removed["nodeEditor"] is None
    assert removed["listenersAborted"] and removed["explorerAborted"]
    # events on the detached canvas reach no handler: no hover, no new point, no explorer request
    assert (removed["hoverAfter"], removed["pointsAfter"], removed["requests"]) == (None, 2, 0)
    assert removed["canvasInDocument"] is False


def test_without_images_or_with_bad_json_the_editor_says_so(session):
    fresh = step(session, "fresh")
    assert fresh["images"] == [None, None] and "click: add a point" in fresh["status"]
    assert fresh["error"].startswith("points are not valid JSON: point 0")
    assert (fresh["value"], fresh["points"]) == ('[{"x": 1}]', 0)  # left as typed, for the user to fix


def test_the_help_panel_shows_the_packs_doc(session):
    assert step(session, "help") is True


def test_browser_session_is_quick(session):
    assert session["seconds"] < 120
