// Drives ComfyUI's real frontend in headless Chromium for tests (reusable: later tests add their own steps).
//
// Usage: node harness.mjs < job.json > result.json
// job:    {"url": "http://127.0.0.1:8188", "steps": [step, ...], "timeout_ms": 120000, "viewport": [w, h],
//          "vue_nodes": true|false (optional: wait until the page runs in that mode before the steps)}
// steps:  {"eval": "async (arg) => ...", "arg": <json>}   run in the page after the app is ready; result recorded
//         {"wait": "() => <bool>", "timeout_ms": 30000}    poll a predicate in the page
//         {"screenshot": "/path/file.png", "clip": "() => ({x, y, width, height})"}   the viewport, or the part the
//                                                  optional page function returns
//         {"mouse": "(arg) => [action, ...]", "arg": <json>}   real mouse and keyboard input at positions the page
//             computes; actions: {"move": [x, y], "steps": n}, {"down": "left"|"right"}, {"up": ...},
//                      {"click": [x, y], "button": "left"|"right"}, {"pause": ms},
//                      {"press": "Control+A"}, {"type": "text typed key by key"}, {"paste": "text in one go"},
//                      {"wheel": [dx, dy]} (at the pointer)
// result: {"results": [...one per step...], "console": [...], "errors": [...page errors...],
//          "failed": ["<status> <url>", ...responses >= 400],
//          "frontend": {"version": "1.27.10", "vueNodes": false}  (what the page really ran: version, Nodes 2.0),
//          "startup": s from browser launch to the app being ready, "seconds_per_step": [s per step]}
// playwright-core comes from npm (PLAYWRIGHT_CORE: its path, else resolved from this file's folders upwards);
// Chromium from CHROMIUM_PATH (default /usr/bin/chromium).
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const timeout = job.timeout_ms ?? 120000;
const profile = mkdtempSync(join(tmpdir(), "ditf-chromium-"));
const consoleLines = [];
const errors = [];
const failed = [];
const results = [];
let frontend = null;
let startup = null; // s from launch until the app was ready
const seconds = []; // per step
const launched = Date.now();
const [width, height] = job.viewport ?? [1600, 1000];
// A fresh profile directory per run (playwright's persistent context is how it takes --user-data-dir).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  viewport: { width, height },
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"],
});
try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.setDefaultTimeout(timeout);
  page.on("console", (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => errors.push(String(error?.stack ?? error)));
  page.on("response", (response) => response.status() >= 400 && failed.push(`${response.status()} ${response.url()}`));
  await page.goto(job.url, { waitUntil: "load" });
  // The app is ready once its graph exists and the node definitions are registered.
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 50);
  if (job.vue_nodes !== undefined) {  // the mode the test asked for (setting Comfy.VueNodes.Enabled) is on
    await page.waitForFunction((on) => Boolean(LiteGraph.vueNodesMode) === on, job.vue_nodes, { timeout: 20000 });
  }
  startup = (Date.now() - launched) / 1000;
  frontend = await page.evaluate(() => ({
    version: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
    vueNodes: Boolean(LiteGraph.vueNodesMode),
  }));
  for (const step of job.steps) {
    const started = Date.now();
    if (step.eval !== undefined) {
      results.push(await page.evaluate(async ([source, arg]) => (0, eval)(`(${source})`)(arg), [step.eval, step.arg ?? null]));
    } else if (step.wait !== undefined) {
      await page.waitForFunction((source) => (0, eval)(`(${source})`)(), step.wait, { timeout: step.timeout_ms ?? timeout });
      results.push(true);
    } else if (step.screenshot !== undefined) {
      const clip = step.clip ? await page.evaluate((source) => (0, eval)(`(${source})`)(), step.clip) : undefined;
      await page.screenshot({ path: step.screenshot, clip });
      results.push(step.screenshot);
    } else if (step.mouse !== undefined) {
      const actions = await page.evaluate(async ([source, arg]) => (0, eval)(`(${source})`)(arg), [step.mouse, step.arg ?? null]);
      for (const action of actions) {
        if (action.move) await page.mouse.move(...action.move, { steps: action.steps ?? 1 });
        else if (action.down) await page.mouse.down({ button: action.down });
        else if (action.up) await page.mouse.up({ button: action.up });
        else if (action.click) await page.mouse.click(...action.click, { button: action.button ?? "left" });
        else if (action.pause) await page.waitForTimeout(action.pause);
        else if (action.press) await page.keyboard.press(action.press);
        else if (action.type !== undefined) await page.keyboard.type(action.type);
        else if (action.paste !== undefined) await page.keyboard.insertText(action.paste);
        else if (action.wheel) await page.mouse.wheel(...action.wheel);
        else throw new Error(`unknown mouse action ${JSON.stringify(action)}`);
      }
      results.push(actions);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
    seconds.push((Date.now() - started) / 1000);
  }
} catch (error) {
  errors.push(`harness: ${error?.stack ?? error}`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify({ results, console: consoleLines, errors, failed, frontend, startup, seconds_per_step: seconds }));
