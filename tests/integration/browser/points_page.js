// Page side of test_frontend_points.py: the statements of one function body, run once per browser session by the
// install step (browser_harness evaluates "() => { <this file> }"); it leaves window.__points, whose methods the
// later steps call. Works on both frontends (1.27.10, 1.58.1) in both modes (classic canvas, Nodes 2.0).
// Methods named like `edit` return mouse / keyboard actions for the harness; the others return state.
const NODE_TYPE = "DiTFCorrespondenceMatch";
let node = null; // the Correspondence Match node under test
let pack = null;
let scale = 1;
const linkReads = { spied: false, ours: 0, others: 0, ourCallers: [] };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function until(predicate, timeout = 30000) {
  const started = performance.now();
  while (!predicate()) {
    if (performance.now() - started > timeout) throw new Error(`timed out waiting for ${predicate}`);
    await sleep(50);
  }
}
const editor = () => node.ditfEditor;
const pointsWidget = () => node.widgets.find((w) => w.name === "points");
const findNode = () => app.graph.nodes.find((n) => n.type === NODE_TYPE);
const centre = (element) => {
  const r = element.getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2];
};
const at = (p) => editor().clientPoint("source", ...p);
const away = [{ move: [5, 500], steps: 2 }, { pause: 150 }];

/** The node at a known zoom near the top left of the graph, so that it is on screen in every mode. */
function focus() {
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [-node.pos[0] + 100, -node.pos[1] + 120];
  app.graph.setDirtyCanvas(true, true);
}

/** 1.58.1 makes input.link a deprecated getter: count the reads whose caller is this pack's code. */
function spyOnInputLinks() {
  const probe = LiteGraph.createNode("PreviewImage");
  let prototype = Object.getPrototypeOf(probe.inputs[0]);
  while (prototype && !Object.getOwnPropertyDescriptor(prototype, "link")) prototype = Object.getPrototypeOf(prototype);
  const descriptor = prototype && Object.getOwnPropertyDescriptor(prototype, "link");
  if (!descriptor?.get) return; // a plain field (1.27.10): nothing is deprecated there
  Object.defineProperty(prototype, "link", {
    ...descriptor,
    get() {
      // [0] "Error", [1] this getter, then Vue's reactive proxy (slots are reactive), then who read it
      const caller = new Error().stack.split("\n").slice(2).find((frame) => !frame.includes("/vendor-vue")) ?? "";
      if (!caller.includes(`/extensions/${pack}/`)) linkReads.others++; // the frontend's own reads
      else if (++linkReads.ours <= 3) linkReads.ourCallers.push(caller.trim());
      return descriptor.get.call(this);
    },
  });
  linkReads.spied = true;
}

/** The colour of the editor's own canvas at a screen point (what it drew there). */
function drawnPixel([x, y]) {
  const { canvas } = editor();
  const rect = canvas.getBoundingClientRect();
  const ratio = canvas.width / rect.width;
  const [cx, cy] = [Math.round((x - rect.left) * ratio), Math.round((y - rect.top) * ratio)];
  return [...canvas.getContext("2d").getImageData(cx, cy, 1, 1).data.slice(0, 3)];
}

/** The textarea that shows the points JSON: the DOM widget's own, or the one Nodes 2.0 renders in the node. */
function jsonTextarea() {
  const widget = pointsWidget();
  const inNode = document.querySelector(`[data-node-id="${node.id}"]`);
  const candidates = [widget.inputEl, ...(inNode?.querySelectorAll("textarea") ?? [])];
  return candidates.find((t) => t && document.contains(t) && t.offsetParent !== null && t.value === widget.value);
}

function editorState() {
  const e = editor();
  return { points: e.points, widget: pointsWidget().value, status: e.status.textContent };
}

window.__points = {
  async setup({ prompt, pack: packDir, scale: zoom }) {
    [pack, scale] = [packDir, zoom];
    spyOnInputLinks();
    await app.loadApiJson(prompt, "ditf-points-test");
    await app.loadGraphData(app.graph.serialize()); // a saved UI workflow with stored points, loaded as users do
    node = findNode();
    focus();
    const e = editor();
    // before any run: the stored points, and the pictures of the LoadImage nodes wired in (the test says if not)
    await until(() => e.images.source?.ready && e.images.target?.ready, 10000).catch(() => null);
    const shown = document.contains(e.canvas) && e.canvas.clientWidth > 0;
    if (shown) await until(() => e.canvas.width > 0 && at([0, 0]) !== null, 5000).catch(() => null);
    await sleep(300); // the node settles (Nodes 2.0 lays it out after the graph loads)
    const palette = await import(`/extensions/${pack}/lib/palette.js`);
    return {
      ...editorState(),
      shown,
      match: e.match,
      extensions: app.extensions.map((x) => x.name).filter((name) => name.startsWith("DiTF")),
      widgets: node.widgets.map((w) => ({ name: w.name, type: w.type, hidden: !!w.hidden, serialize: w.serialize !== false })),
      sources: [e.images.source?.url, e.images.target?.url],
      tooltip: e.canvas.title,
      drawn: shown && at([0, 0]) ? e.points.map((p) => drawnPixel(at([p.x, p.y]))) : null,
      colours: [...Array(12).keys()].map(palette.pointColour),
      heat: [0, 0.25, 0.5, 0.75, 1].map(palette.heatColour),
    };
  },

  /** The node's rectangle on screen (title included), for screenshots. */
  box() {
    const element = document.querySelector(`[data-node-id="${node.id}"]`); // Nodes 2.0: the node is an element
    if (element) {
      const r = element.getBoundingClientRect();
      return { x: r.left - 4, y: r.top - 4, width: r.width + 8, height: r.height + 8 };
    }
    const title = LiteGraph.NODE_TITLE_HEIGHT; // (getBounding() lags behind a node that just grew)
    const [x, y, width, height] = [node.pos[0], node.pos[1] - title, node.size[0], node.size[1] + title];
    const canvas = app.canvas.canvas.getBoundingClientRect();
    const { scale: s, offset } = app.canvas.ds;
    return { x: canvas.left + (x + offset[0]) * s - 4, y: canvas.top + (y + offset[1]) * s - 4,
             width: width * s + 8, height: height * s + 8 };
  },

  /** Click the editor's JSON button (shows / hides the points as text). */
  toggleJSON() {
    const button = [...editor().bar.querySelectorAll("button")].find((b) => b.textContent === "JSON");
    return [{ click: centre(button) }, { pause: 300 }];
  },

  /** Replace the JSON text by typing it key by key or pasting it, as a user does. */
  typeJSON({ text, paste = false }) {
    const textarea = jsonTextarea();
    if (!textarea) throw new Error("no visible textarea shows the points JSON");
    const input = paste ? { paste: text } : { type: text };
    return [{ click: centre(textarea) }, { press: "ControlOrMeta+A" }, input, { pause: 300 }];
  },

  jsonState() {
    return { ...editorState(), textareaShown: Boolean(jsonTextarea()) };
  },

  /** Real mouse input at the editor's own pixel -> screen mapping. */
  edit({ p1, p1Moved, p2, p3 }) {
    return [
      { click: at(p1) }, { click: at(p2) },
      { click: editor().clientPoint("target", 100, 100) }, // the target panel is not editable
      { move: at(p1) }, { down: "left" }, { move: at(p1Moved), steps: 6 }, { up: "left" },
      { click: at(p3) }, { click: at(p3), button: "right" },
      ...away,
    ];
  },

  click({ p, button = "left" }) {
    return [{ click: at(p), button }, ...away];
  },

  state() {
    return editorState();
  },

  async afterEdit() {
    const old = editor();
    const before = node;
    const saved = app.graph.serialize();
    const { output } = await app.graphToPrompt();
    const state = {
      ...editorState(),
      workflowValues: saved.nodes.find((n) => n.type === NODE_TYPE).widgets_values,
      promptPoints: output[String(node.id)].inputs.points,
      promptKeys: Object.keys(output[String(node.id)].inputs).sort(),
    };
    // the saved workflow loaded again (as a shared workflow is): the new editor shows the points, the old one is gone
    const oldCanvas = old.canvas;
    await app.loadGraphData(saved);
    node = findNode();
    focus();
    await until(() => editor()?.images.source?.ready);
    await sleep(300);
    return {
      ...state,
      reloaded: editor().points,
      old: { listenersAborted: old.listeners.signal.aborted, explorerAborted: old.explorer.abort.signal.aborted,
             canvasInDocument: document.contains(oldCanvas), nodeEditor: before.ditfEditor },
    };
  },

  async queue() {
    const e = editor();
    const history = async () => (await fetch("/history")).json();
    const before = new Set(Object.keys(await history()));
    await app.queuePrompt(0, 1);
    let entry = null;
    for (let i = 0; i < 600 && !["success", "error"].includes(entry?.status?.status_str); i++) {
      await sleep(250);
      const all = await history();
      entry = all[Object.keys(all).find((id) => !before.has(id))] ?? null;
    }
    if (entry?.status?.status_str !== "success") return { entry, match: null };
    await until(() => e.match !== null);
    await until(() => e.images.source?.ready && e.images.target?.ready);
    await sleep(500); // let the canvas draw the preview too
    return { ...editorState(), match: e.match, matches: e.matches.length, entry };
  },

  /** Screen positions and drawn colours of the markers, and the node's rectangle for the screenshot. */
  drawn() {
    const e = editor();
    const source = e.points.map((p) => at([p.x, p.y]));
    const target = e.match.target.points.map(([x, y]) => e.clientPoint("target", x, y));
    return {
      source, target, sourcePixels: source.map(drawnPixel), targetPixels: target.map(drawnPixel), box: this.box(),
      targetPanel: [e.clientPoint("target", 0, 0),
                    e.clientPoint("target", e.match.target.width - 1, e.match.target.height - 1)],
    };
  },

  hover({ p }) {
    const [x, y] = at(p);
    return [{ move: [x - 30, y + 20] }, { move: [x + 1, y], steps: 8 }, { pause: 300 }];
  },

  async explored({ index }) {
    const e = editor();
    await until(() => e.explored?.result && e.hover?.index === index && e.explored.xy[0] === e.points[index].x);
    await sleep(100);
    const { heat, ...result } = e.explored.result;
    return { hover: e.hover, result, heatBytes: atob(heat).length, latencies: e.explorer.latencies,
             status: e.status.textContent };
  },

  leave() {
    return away;
  },

  async remove() {
    const e = editor();
    const left = { hover: e.hover, explored: e.explored };
    // a malformed request from the page itself
    const bad = await fetch("/api/ditf/explorer/similarity", { method: "POST", body: '{"explorer": "x", "x": NaN, "y": 1}' });
    const badBody = await bad.json();
    let requests = 0;
    const fetchBefore = window.fetch;
    window.fetch = (...args) => {
      if (String(args[0]).includes("/ditf/explorer/")) requests++;
      return fetchBefore(...args);
    };
    const { canvas, match } = e;
    const points = e.points.length;
    const removed = node;
    app.graph.remove(node);
    const r = canvas.getBoundingClientRect();
    for (const type of ["pointermove", "pointerdown", "pointerup", "contextmenu", "pointerenter"]) {
      canvas.dispatchEvent(new PointerEvent(type, { clientX: r.left + 20, clientY: r.top + 40, button: 0, bubbles: true }));
    }
    // nor does a change elsewhere in the graph reach the removed editor
    const widget = pointsWidget();
    app.api.dispatchEvent(new CustomEvent("graphChanged", { detail: {} }));
    await sleep(300);
    window.fetch = fetchBefore;
    return { left, bad: [bad.status, badBody], nodeEditor: removed.ditfEditor, listenersAborted: e.listeners.signal.aborted,
             explorerAborted: e.explorer.abort.signal.aborted, hoverAfter: e.hover, pointsAfter: e.points.length,
             pointsBefore: points, widgetKept: widget.value === JSON.stringify(e.points), requests,
             canvasInDocument: document.contains(canvas), matchKept: e.match === match };
  },

  /** A new node: no images until a LoadImage is linked (and another file picked, and unlinked again); points
   * from a link are not editable; unreadable JSON is reported, not overwritten. None of it needs the node drawn. */
  async fresh({ images }) {
    const created = LiteGraph.createNode(NODE_TYPE);
    app.graph.add(created);
    const e = created.ditfEditor;
    const empty = { status: e.status.textContent, images: [e.images.source, e.images.target] };
    const loader = LiteGraph.createNode("LoadImage");
    app.graph.add(loader);
    const file = loader.widgets.find((w) => w.name === "image");
    file.value = images[0];
    const sourceSlot = created.findInputSlot("source_image");
    loader.connect(0, created, sourceSlot);
    await sleep(50);
    const linked = e.images.source?.url ?? null;
    file.value = images[1]; // another file picked: the editor follows when the pointer comes to it
    e.canvas.dispatchEvent(new PointerEvent("pointerenter"));
    const picked = e.images.source?.url ?? null;
    created.disconnectInput(sourceSlot);
    await sleep(50);
    const unlinked = e.images.source;
    const text = LiteGraph.createNode("PrimitiveString");
    app.graph.add(text);
    text.connect(0, created, created.findInputSlot("points"));
    await sleep(50);
    const fromLink = e.status.textContent;
    created.disconnectInput(created.findInputSlot("points"));
    await sleep(50);
    const widget = created.widgets.find((w) => w.name === "points");
    widget.value = '[{"x": 1}]'; // set by a script: the editor follows without being drawn
    const r = e.canvas.getBoundingClientRect();
    e.canvas.dispatchEvent(new PointerEvent("pointerdown", { clientX: r.left + 30, clientY: r.top + 60, button: 0, bubbles: true }));
    const result = { ...empty, linked, picked, unlinked, fromLink, error: e.status.textContent, value: widget.value,
                     points: e.points.length };
    for (const extra of [created, loader, text]) app.graph.remove(extra);
    return result;
  },

  /** The node help panel (selection toolbox -> info) renders the pack's web/docs/<node_id>.md. */
  async help() {
    const extract = app.graph.nodes.find((n) => n.type === "DiTFExtractFeatures");
    app.canvas.selectNode(extract);
    app.graph.setDirtyCanvas(true, true);
    await until(() => document.querySelector('[data-testid="info-button"]'), 10000);
    document.querySelector('[data-testid="info-button"]').click();
    const phrase = "Extract the source and the target with the same model";
    await until(() => document.body.innerText.includes(phrase), 10000);
    return true;
  },

  linkReads() {
    return linkReads;
  },
};
