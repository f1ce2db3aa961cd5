"""Python side of the headless-Chromium harness (browser/harness.mjs): run steps in ComfyUI's real frontend."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

HARNESS = Path(__file__).parent / "browser" / "harness.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def unavailable() -> str | None:
    """Why the browser harness cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (set CHROMIUM_PATH)"
    probe = subprocess.run(
        ["node", "-e", "require(process.env.PLAYWRIGHT_CORE || 'playwright-core')"],
        cwd=HARNESS.parent, capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        return "playwright-core is not installed (npm install --no-save --no-package-lock playwright-core)"
    return None


def run_steps(url: str, steps: list[dict], timeout: float = 180.0, viewport=(1600, 1000)) -> dict:
    """Open ``url`` in headless Chromium, wait for the ComfyUI app, run ``steps`` (see harness.mjs)."""
    job = {"url": url, "steps": steps, "timeout_ms": int(timeout * 1000), "viewport": list(viewport)}
    done = subprocess.run(
        ["node", str(HARNESS)], input=json.dumps(job), cwd=HARNESS.parent, capture_output=True, text=True,
        timeout=timeout + 60,
    )
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"browser harness failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout)
