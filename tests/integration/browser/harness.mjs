// Drives ComfyUI's real frontend in headless Chromium for tests (reusable: later tests add their own steps).
//
// Usage: node harness.mjs < job.json > result.json
// job:    {"url": "http://127.0.0.1:8188", "steps": [step, ...], "timeout_ms": 120000, "viewport": [w, h]}
// steps:  {"eval": "async (arg) => ...", "arg": <json>}   run in the page after the app is ready; result recorded
//         {"wait": "() => <bool>", "timeout_ms": 30000}    poll a predicate in the page
//         {"screenshot": "/path/file.png"}                 the whole viewport
// result: {"results": [...one per step...], "console": [...], "errors": [...page errors...]}
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
const results = [];
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
  await page.goto(job.url, { waitUntil: "load" });
  // The app is ready once its graph exists and the node definitions are registered.
  await page.waitForFunction(() => window.app?.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 50);
  for (const step of job.steps) {
    if (step.eval !== undefined) {
      results.push(await page.evaluate(async ([source, arg]) => (0, eval)(`(${source})`)(arg), [step.eval, step.arg ?? null]));
    } else if (step.wait !== undefined) {
      await page.waitForFunction((source) => (0, eval)(`(${source})`)(), step.wait, { timeout: step.timeout_ms ?? timeout });
      results.push(true);
    } else if (step.screenshot !== undefined) {
      await page.screenshot({ path: step.screenshot });
      results.push(step.screenshot);
    } else {
      throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
} catch (error) {
  errors.push(`harness: ${error?.stack ?? error}`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify({ results, console: consoleLines, errors }));
