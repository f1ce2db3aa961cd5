// The live correspondence explorer's client: asks the pack's route for the similarity map of one source point
// (POST /ditf/explorer/similarity, answered from features the last Correspondence Match run kept in memory).
// At most one request is in flight per node; while it runs, only the newest point waits (hover sends many).
import { api } from "../../../scripts/api.js";
import { heatColour } from "./palette.js";

export const EXPLORER_PATH = "/ditf/explorer/similarity";

export class ExplorerClient {
  /** onAnswer({xy, result} | {xy, error}) is called with each answer, in order. */
  constructor(onAnswer) {
    this.onAnswer = onAnswer;
    this.pending = null;
    this.busy = false;
    this.abort = new AbortController();
    this.latencies = []; // ms of the last answers, for the status line and the tests
  }

  request(explorer, x, y) {
    this.pending = { explorer, x, y };
    if (!this.busy) this.#next();
  }

  dispose() {
    this.pending = null;
    this.abort.abort();
  }

  async #next() {
    const query = this.pending;
    this.pending = null;
    if (!query || this.abort.signal.aborted) return;
    this.busy = true;
    const started = performance.now();
    let answer;
    try {
      const response = await api.fetchApi(EXPLORER_PATH, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(query),
        signal: this.abort.signal,
      });
      const body = await response.json().catch(() => ({}));
      answer = response.ok
        ? { xy: [query.x, query.y], result: body }
        : { xy: [query.x, query.y], error: body.error ?? `HTTP ${response.status}`, status: response.status };
    } catch (error) {
      if (this.abort.signal.aborted) return;
      answer = { xy: [query.x, query.y], error: String(error?.message ?? error) };
    } finally {
      this.busy = false;
    }
    this.latencies = [...this.latencies.slice(-19), performance.now() - started];
    this.onAnswer(answer);
    if (this.pending) this.#next();
  }
}

/** The answer's heat (w*h bytes, base64, row-major) as a w x h canvas coloured with the shared ramp. */
export function heatCanvas(result) {
  const { width, height } = result;
  if (result.encoding !== "uint8-base64") throw new Error(`unknown heat encoding ${result.encoding}`);
  const bytes = Uint8Array.from(atob(result.heat), (c) => c.charCodeAt(0));
  if (bytes.length !== width * height) throw new Error(`heat has ${bytes.length} values, expected ${width * height}`);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  bytes.forEach((value, i) => {
    image.data.set([...heatColour(value / 255), 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
  return canvas;
}
