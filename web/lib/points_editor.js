// The point editor drawn inside Correspondence Match: source image on the left (click to add a point, drag to
// move, right-click to delete), target image on the right (the last run's matches in the same colours with their
// cosine scores; hovering the source shows that point's similarity heatmap there, from the live explorer).
// Points are ORIGINAL source pixels, pixel centres at integers, kept as KJNodes PointsEditor JSON in the node's
// `points` widget, so they are saved with the workflow and sent with the prompt.
// It draws into its own <canvas> inside the DOM widget's element, whether the frontend lays that element over the
// graph canvas (classic) or inside a Vue node (Nodes 2.0), and it is never drawn by the graph canvas's hooks: it
// redraws on its own events and resizes, and re-reads the widget before every edit (sync).
import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";
import { ExplorerClient, heatCanvas } from "./explorer.js";
import { clipTo, cross, label, marker } from "./draw.js";
import { cssColour, pointColour } from "./palette.js";

const GAP = 8; // px between the two panels
const TITLE = 16; // px of panel title above each image
const HIT = 10; // pick distance for drag / delete, px
const HEAT_ALPHA = 0.55; // as draw.heatmap_overlay
const BUTTON_STYLE = "font: 11px sans-serif; padding: 1px 8px; cursor: pointer;";

export const HELP = "click: add a point · drag: move · right-click: delete · hover: similarity in the target";

/** Points from KJNodes JSON ([{"x", "y"}, ...]) or [[x, y], ...]; throws on anything else. */
export function parsePoints(text) {
  const data = text.trim() ? JSON.parse(text) : [];
  const list = Array.isArray(data) ? data : [data];
  return list.map((p, i) => {
    const [x, y] = Array.isArray(p) ? p : [p?.x, p?.y];
    if (!Number.isFinite(x) || !Number.isFinite(y)) throw new Error(`point ${i} is not {"x": number, "y": number}`);
    return { x, y };
  });
}

export class PointsEditor {
  /** widget: the node's `points` STRING widget (the stored JSON); element: the DOM widget's container. */
  constructor(node, widget, element) {
    this.node = node;
    this.widget = widget;
    this.points = [];
    this.text = null; // the widget text the points were read from
    this.error = null;
    this.matches = null; // the last run's ditf_match list
    this.pair = 0;
    this.match = null; // the entry shown (image pair `pair`)
    this.images = { source: null, target: null }; // {url, image, width, height} per panel
    this.hover = null; // {xy, index}
    this.explored = null; // last explorer answer {xy, result | error}
    this.drag = null; // index of the point being dragged
    this.explorer = new ExplorerClient((answer) => this.#onExplorerAnswer(answer));
    this.#build(element);
    this.sync();
  }

  /** Re-read the widget's JSON when it changed outside the editor (workflow loaded, text edited, set by a script). */
  sync() {
    const text = String(this.widget.value ?? "");
    if (text === this.text) return;
    this.text = text;
    try {
      this.points = parsePoints(text);
      this.error = null;
    } catch (error) {
      this.error = `points are not valid JSON: ${error.message}`;
    }
    this.draw();
  }

  /** The last run's matches (the ui message's ditf_match list, one entry per image pair); null clears. */
  setMatches(matches, pair = 0) {
    this.matches = Array.isArray(matches) && matches.length ? matches : null;
    this.pair = this.matches ? clamp(pair, 0, this.matches.length - 1) : 0;
    this.match = this.matches?.[this.pair] ?? null;
    this.explored = null;
    if (this.match) {
      const { source, target } = this.match;
      this.setImage("source", source.image, source.width, source.height);
      this.setImage("target", target.image, target.width, target.height);
      // the server prepares a pair on its first query (~0.1 s for 40 x 40 x 3072): do that now, not on first hover
      const [x, y] = source.points[0] ?? [0, 0];
      if (this.match.explorer) this.explorer.request(this.match.explorer, x, y);
    }
    this.pairButton.style.display = this.matches?.length > 1 ? "" : "none";
    this.pairButton.textContent = `pair ${this.pair + 1}/${this.matches?.length ?? 1}`;
    this.draw();
  }

  /** Show an image ({filename, subfolder, type} as /view takes it, or a URL string) in a panel; null clears. */
  setImage(panel, info, width, height) {
    const url = info == null ? null : typeof info === "string" ? info : viewURL(info);
    if (this.images[panel]?.url === url) return;
    if (url === null) {
      this.images[panel] = null;
      this.draw();
      return;
    }
    const image = new Image();
    const entry = { url, image, width, height, ready: false };
    this.images[panel] = entry;
    image.onload = () => {
      entry.ready = true;
      entry.width ??= image.naturalWidth;
      entry.height ??= image.naturalHeight;
      this.draw();
    };
    image.onerror = () => console.warn(`[DiTF] could not load ${url}`);
    image.src = url;
  }

  /** A small button in the editor's bar (e.g. the JSON toggle); its listener goes when the editor does. */
  addButton(text, title, onClick) {
    const button = document.createElement("button");
    button.textContent = text;
    button.title = title;
    button.style.cssText = BUTTON_STYLE;
    this.listen(button, "click", onClick);
    this.bar.append(button);
    return button;
  }

  /** addEventListener on any target, removed when the editor is disposed. */
  listen(target, type, handler) {
    target.addEventListener(type, handler, { signal: this.listeners.signal });
  }

  dispose() {
    this.explorer.dispose();
    this.resizeObserver.disconnect();
    this.listeners.abort(); // removes every listener added with its signal
    this.images = { source: null, target: null };
  }

  /** Where source or target pixel (x, y) is on screen (client coordinates), or null: for tests and tooling. */
  clientPoint(panel, x, y) {
    const view = this.#view(panel);
    if (!view) return null;
    const rect = this.canvas.getBoundingClientRect();
    const zoom = rect.width / this.canvas.clientWidth;
    const [sx, sy] = view.toScreen(x, y);
    return [rect.left + sx * zoom, rect.top + sy * zoom];
  }

  // --- drawing ---------------------------------------------------------------------------------------------
  draw() {
    this.status.textContent = this.#statusText();
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    this.#drawPanel(ctx, "source");
    this.#drawPanel(ctx, "target");
    this.#drawSourcePoints(ctx);
    this.#drawTargetOverlay(ctx);
  }

  #drawPanel(ctx, panel) {
    const area = this.#area(panel);
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(area.left, area.top, area.width, area.height);
    ctx.fillStyle = "#bbb";
    ctx.textAlign = "left";
    ctx.fillText(panel, area.left + 4, area.top - TITLE / 2);
    const view = this.#view(panel);
    if (!view) {
      const text = panel === "source" ? "run once to see the image" : "run to see the matches";
      ctx.fillStyle = "#888";
      ctx.textAlign = "center";
      ctx.fillText(text, area.left + area.width / 2, area.top + area.height / 2);
      return;
    }
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.images[panel].image, view.left, view.top, view.width, view.height);
  }

  #drawSourcePoints(ctx) {
    const view = this.#view("source");
    if (!view) return;
    clipTo(ctx, this.#area("source"), () => {
      const valid = this.#isCurrentMatch() ? this.match.valid : null;
      this.#shownPoints().forEach((p, i) => {
        const [x, y] = view.toScreen(p.x, p.y);
        const highlighted = i === this.drag || i === this.hover?.index;
        marker(ctx, x, y, pointColour(i), valid ? valid[i] !== false : true, highlighted);
        label(ctx, x, y, String(i));
      });
      if (this.hover && this.hover.index < 0) cross(ctx, ...view.toScreen(...this.hover.xy), "#fff");
    });
  }

  #drawTargetOverlay(ctx) {
    const view = this.#view("target");
    if (!view) return;
    clipTo(ctx, this.#area("target"), () => {
      const result = this.explored?.result;
      if (this.hover && result && this.explored.heat) {
        ctx.save();
        ctx.globalAlpha = HEAT_ALPHA;
        ctx.imageSmoothingEnabled = true; // bilinear, as the Python overlay resizes its heatmap
        ctx.drawImage(this.explored.heat, view.left, view.top, view.width, view.height);
        ctx.restore();
        const [x, y] = view.toScreen(...result.best);
        const colour = this.hover.index >= 0 ? pointColour(this.hover.index) : [255, 255, 255];
        cross(ctx, x, y, cssColour(colour));
        marker(ctx, x, y, colour, true, true);
        label(ctx, x, y, result.score.toFixed(2));
        return;
      }
      if (!this.match) return;
      const { points, scores } = this.match.target;
      ctx.globalAlpha = this.#isCurrentMatch() ? 1 : 0.45; // dimmed: the points moved since the run
      points.forEach(([px, py], i) => {
        if (this.match.valid?.[i] === false) return; // outside source_mask: no match
        const [x, y] = view.toScreen(px, py);
        marker(ctx, x, y, pointColour(i), true, false);
        label(ctx, x, y, `${i}: ${Number(scores?.[i] ?? 0).toFixed(2)}`);
      });
      ctx.globalAlpha = 1;
    });
  }

  /** The editable points; with none, the points the run picked inside source_mask (shown, not editable). */
  #shownPoints() {
    if (this.points.length || !this.match) return this.points;
    return this.match.source.points.map(([x, y]) => ({ x, y }));
  }

  #statusText() {
    if (this.error) return this.error;
    if (this.#linked()) return "points come from a link: editing is off";
    const count = `${this.points.length} point${this.points.length === 1 ? "" : "s"}`;
    if (this.explored?.error && this.hover) return `explorer: ${this.explored.error}`;
    if (!this.match) return `${count} · ${HELP}`;
    if (!this.#isCurrentMatch()) return `${count} · points changed since the run: queue to update the matches`;
    const picked = this.points.length ? count : `${this.match.source.points.length} points from source_mask`;
    const explore = this.match.explorer ? "hover the source to explore" : "no live explorer for this pair (8 are kept)";
    return `${picked} · matched (${this.match.mode}) · ${explore}`;
  }

  // --- geometry --------------------------------------------------------------------------------------------
  #area(panel) {
    const width = (this.canvas.clientWidth - GAP) / 2;
    const left = panel === "source" ? 0 : width + GAP;
    return { left, top: TITLE, width, height: this.canvas.clientHeight - TITLE };
  }

  /** The image rectangle in a panel (contain-fit) and its pixel <-> screen mapping, or null without an image. */
  #view(panel) {
    const entry = this.images[panel];
    if (!entry?.ready || !entry.width || !entry.height) return null;
    const area = this.#area(panel);
    const scale = Math.min(area.width / entry.width, area.height / entry.height);
    const width = entry.width * scale;
    const height = entry.height * scale;
    const left = area.left + (area.width - width) / 2;
    const top = area.top + (area.height - height) / 2;
    return {
      left, top, width, height, scale, image: [entry.width, entry.height],
      toScreen: (x, y) => [left + (x + 0.5) * scale, top + (y + 0.5) * scale],
      toPixel: (sx, sy) => [(sx - left) / scale - 0.5, (sy - top) / scale - 0.5],
    };
  }

  // --- input -----------------------------------------------------------------------------------------------
  #build(element) {
    element.style.cssText = "display: flex; flex-direction: column; gap: 4px; min-height: 0;";
    this.listeners = new AbortController();
    this.bar = document.createElement("div");
    this.bar.style.cssText = "display: flex; gap: 6px; align-items: center; font: 11px sans-serif; color: #ccc;";
    this.status = document.createElement("span");
    this.status.style.cssText = "flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;";
    this.bar.append(this.status);
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "flex: 1; width: 100%; min-height: 0; cursor: crosshair; touch-action: none;";
    this.canvas.title = `Points on the source image (original pixels). ${HELP}`;
    element.append(this.bar, this.canvas);
    this.pairButton = this.addButton("pair 1/1", "Show the next image pair of the batch", () =>
      this.setMatches(this.matches, (this.pair + 1) % this.matches.length));
    this.pairButton.style.display = "none";
    this.addButton("Clear", "Remove all points", () => {
      this.sync();
      if (this.#editable()) this.#setPoints([]);
    });

    this.listen(this.canvas, "pointerdown", (e) => this.#onPointerDown(e));
    this.listen(this.canvas, "pointermove", (e) => this.#onPointerMove(e));
    this.listen(this.canvas, "pointerup", (e) => this.#onPointerUp(e));
    this.listen(this.canvas, "pointerleave", () => this.#setHover(null));
    this.listen(this.canvas, "contextmenu", (e) => this.#onContextMenu(e));
    // zoom the graph as everywhere else on the canvas
    this.listen(this.canvas, "wheel", (e) => app.canvas?.processMouseWheel?.(e));
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
  }

  /** Source pixel under the pointer and the index of the point within reach (-1: none), or null off the image. */
  #pick(event) {
    const view = this.#view("source");
    if (!view) return null;
    const rect = this.canvas.getBoundingClientRect();
    const zoom = rect.width / this.canvas.clientWidth; // the canvas is scaled with the graph
    const sx = (event.clientX - rect.left) / zoom;
    const sy = (event.clientY - rect.top) / zoom;
    let index = -1;
    let nearest = HIT;
    this.points.forEach((p, i) => {
      const [px, py] = view.toScreen(p.x, p.y);
      const distance = Math.hypot(px - sx, py - sy);
      if (distance <= nearest) [index, nearest] = [i, distance];
    });
    const [x, y] = view.toPixel(sx, sy);
    const [w, h] = view.image;
    const inside = x >= -0.5 && x <= w - 0.5 && y >= -0.5 && y <= h - 0.5;
    if (!inside && index < 0) return null;
    return { xy: [clamp(Math.round(x), 0, w - 1), clamp(Math.round(y), 0, h - 1)], index };
  }

  #onPointerDown(event) {
    if (event.button !== 0) return;
    this.sync(); // an edit starts from the stored points, whatever happened to the widget since the last event
    if (!this.#editable()) return;
    const pick = this.#pick(event);
    if (!pick) return;
    event.preventDefault();
    event.stopPropagation();
    if (pick.index < 0) {
      this.points = [...this.points, { x: pick.xy[0], y: pick.xy[1] }];
      pick.index = this.points.length - 1;
    }
    this.drag = pick.index;
    this.canvas.setPointerCapture?.(event.pointerId);
    this.#setHover({ xy: [this.points[pick.index].x, this.points[pick.index].y], index: pick.index });
  }

  #onPointerMove(event) {
    const pick = this.#pick(event);
    if (this.drag !== null) {
      if (pick) this.points[this.drag] = { x: pick.xy[0], y: pick.xy[1] };
      this.#setHover({ xy: [this.points[this.drag].x, this.points[this.drag].y], index: this.drag });
      return;
    }
    // hovering a point explores exactly that point; elsewhere the pixel under the pointer
    if (pick && pick.index >= 0) pick.xy = [this.points[pick.index].x, this.points[pick.index].y];
    this.#setHover(pick);
  }

  #onPointerUp(event) {
    if (this.drag === null) return;
    this.drag = null;
    this.canvas.releasePointerCapture?.(event.pointerId);
    this.#setPoints(this.points);
  }

  #onContextMenu(event) {
    event.preventDefault(); // no browser menu over the editor
    event.stopPropagation();
    this.sync();
    const pick = this.#pick(event);
    if (!pick || pick.index < 0 || !this.#editable()) return;
    this.#setPoints(this.points.filter((_, i) => i !== pick.index));
    this.#setHover(null);
  }

  #setHover(hover) {
    this.hover = hover;
    if (hover && this.match?.explorer) this.explorer.request(this.match.explorer, hover.xy[0], hover.xy[1]);
    if (!hover) this.explored = null; // no stale heatmap when the pointer comes back elsewhere
    this.draw();
  }

  #onExplorerAnswer(answer) {
    if (!this.hover) return; // a late answer after the pointer left
    if (answer.result) {
      try {
        answer.heat = heatCanvas(answer.result);
      } catch (error) {
        answer.error = error.message;
        delete answer.result;
      }
    }
    // ComfyUI replays a cached node's old ui (and id) on an unchanged graph: a real change is needed
    if (answer.status === 404) answer.error = "features no longer in memory: change an input and queue again";
    this.explored = answer;
    this.draw();
  }

  /** Store points in the widget (saved with the workflow, sent with the prompt). */
  #setPoints(points) {
    this.points = points.map(({ x, y }) => ({ x, y }));
    this.text = JSON.stringify(this.points);
    this.widget.value = this.text;
    this.node.setDirtyCanvas?.(true, true);
    this.draw();
  }

  /** Unreadable JSON is left for the user to fix (an edit would overwrite it); a linked input is not ours. */
  #editable() {
    return !this.error && !this.#linked();
  }

  #linked() {
    const slot = this.node.findInputSlot(this.widget.name);
    return slot >= 0 && this.node.isInputConnected(slot); // (input.link is deprecated in newer frontends)
  }

  /** Whether the shown matches belong to the points as they are now (no points: the run's own, from the mask). */
  #isCurrentMatch() {
    const matched = this.match?.source?.points;
    if (matched && this.points.length === 0) return true;
    if (!matched || matched.length !== this.points.length) return false;
    return matched.every(([x, y], i) => Math.abs(x - this.points[i].x) < 0.5 && Math.abs(y - this.points[i].y) < 0.5);
  }
}

/** The URL of an image ComfyUI serves: {filename, subfolder, type} as in a node's ui "images" entries. */
export function viewURL({ filename, subfolder = "", type = "temp" }) {
  return api.apiURL(`/view?${new URLSearchParams({ filename, subfolder, type })}`);
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}
