// DiTF frontend extension: the point editor and live correspondence explorer on Correspondence Match.
// Served as /extensions/<pack>/ditf_points.js; the frontend imports every .js file under web/, and the modules in
// lib/ only export (importing them twice is harmless).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { PointsEditor } from "./lib/points_editor.js";

const NODE_TYPE = "DiTFCorrespondenceMatch";
const POINTS = "points"; // the STRING input that holds the KJNodes PointsEditor JSON
const IMAGE_INPUTS = { source: "source_image", target: "target_image" };
const MIN_SIZE = [560, 520];

app.registerExtension({
  name: "DiTF.PointsEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      attach(this);
    });
    // a link made or removed: other images, or points that now come from a link (after the link is in place)
    chain(nodeType.prototype, "onConnectionsChange", function () {
      queueMicrotask(() => {
        refresh(this);
        this.ditfEditor?.draw(); // the status line says whether the points come from a link
      });
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      if (!this.ditfEditor) return;
      this.ditfEditor.setMatches(message?.ditf_match);
      this.ditfUpstream = upstreamImages(this); // the images these matches were computed for
      refresh(this);
    });
    chain(nodeType.prototype, "onRemoved", function () {
      this.ditfEditor?.dispose();
      this.ditfEditor = null;
    });
  },
  // A workflow was loaded: every node is configured now, so the LoadImage values this node shows are in too.
  loadedGraphNode(node) {
    if (node.ditfEditor) refresh(node);
  },
});

// The editor never depends on being drawn: Nodes 2.0 (Vue nodes) never call a DOM widget's onDraw. It re-reads the
// `points` widget and the upstream images on every event that can change them (above, and in attach), and the
// editor re-reads the widget before every edit, so an edit always starts from the stored points.
function attach(node) {
  const widget = node.widgets?.find((w) => w.name === POINTS);
  if (!widget || typeof node.addDOMWidget !== "function") {
    // an older / newer frontend or pack: the node still works, with the points typed as JSON
    console.warn(`[DiTF] point editor off: ${widget ? "this frontend has no DOM widgets" : `no '${POINTS}' widget`}`);
    return;
  }
  const element = document.createElement("div");
  const editor = new PointsEditor(node, widget, element);
  const view = node.addDOMWidget("points_editor", "ditf_points", element, {
    serialize: false, // the points live in the `points` widget; this one only shows them
    hideOnZoom: false,
    getMinHeight: () => 260,
  });
  view.serialize = false; // not in widgets_values either
  node.ditfEditor = editor;
  // Both frontends call the widget's callback whenever its value is set: typed, pasted, loaded or set by a script.
  const callback = widget.callback;
  widget.callback = function (...args) {
    const result = callback?.apply(this, args);
    node.ditfEditor?.sync();
    return result;
  };
  // A LoadImage upstream picked another file; the frontend's change tracker reports every change to the graph.
  editor.listen(api, "graphChanged", () => refresh(node));
  editor.listen(editor.canvas, "pointerenter", () => refresh(node));
  showJSON(widget, false); // the JSON stays in the workflow; the editor is how it is edited
  editor.addButton("JSON", "Show or hide the points as KJNodes PointsEditor JSON (editable)", () => {
    showJSON(widget, widget.hidden);
    node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
    node.setDirtyCanvas(true, true);
  });
  node.setSize([Math.max(node.size[0], MIN_SIZE[0]), Math.max(node.size[1], MIN_SIZE[1])]);
}

function showJSON(widget, visible) {
  widget.hidden = !visible;
  // litegraph lays hidden widgets out too: a fixed height of 0 (computeSize()[1] + 4) takes the textarea out
  if (visible) delete widget.computeSize;
  else widget.computeSize = () => [0, -4];
}

/** Pick up the `points` JSON as it is now, and the upstream images (shown before a run, or once they changed). */
function refresh(node) {
  const editor = node.ditfEditor;
  if (!editor) return;
  editor.sync();
  const upstream = upstreamImages(node);
  if (editor.match && !sameImages(upstream, node.ditfUpstream)) editor.setMatches(null); // other images now
  if (!editor.match) {
    editor.setImage("source", upstream.source);
    editor.setImage("target", upstream.target);
  }
}

/** /view URLs of the LoadImage nodes feeding source_image / target_image (through reroutes), else null. */
function upstreamImages(node) {
  const urls = { source: null, target: null };
  if (!node.graph) return urls; // not added to a graph yet (1.58.1 throws on links of a node without one)
  for (const [panel, name] of Object.entries(IMAGE_INPUTS)) {
    let slot = node.findInputSlot(name);
    let origin = slot >= 0 ? node.getInputNode(slot) : null;
    for (let hops = 0; origin?.type === "Reroute" && hops < 16; hops++) origin = origin.getInputNode(0);
    urls[panel] = origin?.type === "LoadImage" ? loadImageURL(origin) : null;
  }
  return urls;
}

function loadImageURL(loader) {
  const value = loader.widgets?.find((w) => w.name === "image")?.value;
  if (typeof value !== "string" || !value) return null;
  // "sub/dir/name.png [input]" -> filename, subfolder, type (as the LoadImage preview asks /view)
  const match = value.match(/^(.*?)(?: \[(input|output|temp)\])?$/);
  const path = match[1];
  const cut = path.lastIndexOf("/");
  const params = new URLSearchParams({
    filename: path.slice(cut + 1),
    subfolder: cut >= 0 ? path.slice(0, cut) : "",
    type: match[2] ?? "input",
  });
  return api.apiURL(`/view?${params}`);
}

function sameImages(a, b) {
  return a?.source === b?.source && a?.target === b?.target;
}

function chain(object, name, callback) {
  const original = object[name];
  object[name] = function (...args) {
    const result = original?.apply(this, args);
    callback.apply(this, args);
    return result;
  };
}
