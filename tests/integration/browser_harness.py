"""Python side of the headless-Chromium harness (browser/harness.mjs): run steps in ComfyUI's real frontend.

Browser tests run in four modes: the frontend bundled with ComfyUI 0.3.64 (1.27.10) and the newest one
(comfyui-frontend-package 1.58.1, served by a second server with ``--front-end-root``; the
``new_frontend_server`` fixture), each with the classic canvas and with "Modern Node Design (Nodes 2.0)"
(setting ``Comfy.VueNodes.Enabled``). 1.27.10 has Nodes 2.0 too, as a hidden experimental setting (toggled by
the "Experimental: Enable Vue Nodes" command); its Vue nodes render only the frontend's own widget types, so
no pack's DOM widget (our point editor included) appears there: the node shows its ``points`` JSON instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

HARNESS = Path(__file__).parent / "browser" / "harness.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# mode id -> (frontend, Nodes 2.0 on)
BROWSER_MODES = {
    "bundled-classic": ("bundled", False),
    "bundled-nodes2": ("bundled", True),
    "newest-classic": ("newest", False),
    "newest-nodes2": ("newest", True),
}

# Page errors that are not ours, each checked by hand on a fresh profile with no custom nodes at all.
KNOWN_PAGE_ERRORS = (
    "Cannot read properties of undefined (reading 'id')",  # 1.27.10 on start-up, in its settings store
)
# Responses >= 400 that are not ours: (pattern of "<status> <path?query>", why).
KNOWN_FAILED_RESPONSES = (
    # a fresh user has none of these files; the frontend asks and takes the 404 as "none" (both frontends)
    (r"404 /api/userdata/(user\.css|comfy\.templates\.json)", "absent user file"),
    (r"404 /user\.css", "absent user file"),
    (r"404 /api/userdata\?dir=(workflows|subgraphs)", "absent user folder"),
    # endpoints the newest frontend calls that ComfyUI 0.3.64 does not have yet (its queue/history panel and
    # shared subgraph blueprints): the old backend's 404, not a fault of this pack
    (r"404 /api/jobs\?", "0.3.64 has no jobs API"),
    (r"404 /api/global_subgraphs$", "0.3.64 has no global subgraphs API"),
)
KNOWN_CONSOLE_ERRORS = (
    # the newest frontend's queue panel logs the same missing /api/jobs endpoint (0.3.64's, not ours)
    "[Jobs API] Error fetching jobs", "Failed to fetch queue: JobsApiError",
    # Chromium's line for every failed response: those are judged by unexpected_responses
    "Failed to load resource: the server responded with a status of",
)


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


def run_steps(url: str, steps: list[dict], timeout: float = 180.0, viewport=(1600, 1000),
              vue_nodes: bool | None = None) -> dict:
    """Open ``url`` in headless Chromium, wait for the ComfyUI app, run ``steps`` (see harness.mjs)."""
    job = {"url": url, "steps": steps, "timeout_ms": int(timeout * 1000), "viewport": list(viewport)}
    if vue_nodes is not None:
        job["vue_nodes"] = vue_nodes
    done = subprocess.run(
        ["node", str(HARNESS)], input=json.dumps(job), cwd=HARNESS.parent, capture_output=True, text=True,
        timeout=timeout + 60,
    )
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"browser harness failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout)


@dataclass
class BrowserFrontend:
    """One frontend in one mode, on its live server: ``run`` opens a browser session in that mode."""

    mode: str  # a BROWSER_MODES id
    server: object  # live_server.ComfyServer
    version: str  # the frontend version the page must report

    @property
    def vue_nodes(self) -> bool:
        return BROWSER_MODES[self.mode][1]

    @property
    def editor_shown(self) -> bool:
        """Whether this frontend mounts the pack's DOM widgets (not in 1.27.10's experimental Vue nodes)."""
        return self.mode != "bundled-nodes2"

    def run(self, steps: list[dict], timeout: float = 180.0, viewport=(1600, 1000)) -> dict:
        # settings live on the server; every session sets its own mode before the page reads them
        self.server.post("/settings/Comfy.TutorialCompleted", True)  # no template dialog over the canvas
        self.server.post("/settings/Comfy.VueNodes.Enabled", self.vue_nodes)
        result = run_steps(self.server.url, steps, timeout=timeout, viewport=viewport, vue_nodes=self.vue_nodes)
        if result["frontend"] is not None:  # None: the app never started (the harness error says why)
            assert result["frontend"] == {"version": self.version, "vueNodes": self.vue_nodes}, result["frontend"]
        return result


def open_frontend(request, mode: str) -> BrowserFrontend:
    """The frontend of a BROWSER_MODES id on its server (started on first use), or a skip saying what is missing."""
    reason = unavailable()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    frontend, _ = BROWSER_MODES[mode]
    if frontend == "bundled":
        # the frontend installed in ComfyUI's Python (this one): 1.27.10 for ComfyUI 0.3.64
        return BrowserFrontend(mode, request.getfixturevalue("server"),
                               importlib.metadata.version("comfyui-frontend-package"))
    server = request.getfixturevalue("new_frontend_server")
    return BrowserFrontend(mode, server, server.frontend_version)


def unexpected(errors: list[str]) -> list[str]:
    """Page errors that are not in KNOWN_PAGE_ERRORS."""
    return [error for error in errors if not any(known in error for known in KNOWN_PAGE_ERRORS)]


def unexpected_responses(result: dict, url: str, ours: tuple[str, ...] = ()) -> list[str]:
    """Failed responses that are neither in KNOWN_FAILED_RESPONSES nor in ``ours`` (exact "<status> <path>")."""
    left = []
    for line in result["failed"]:
        status, address = line.split(" ", 1)
        path = f"{status} {address.removeprefix(url)}"
        if path not in ours and not any(re.match(pattern, path) for pattern, _ in KNOWN_FAILED_RESPONSES):
            left.append(path)
    return left


def unexpected_console_errors(result: dict) -> list[str]:
    return [line for line in result["console"]
            if line.startswith("error:") and not any(known in line for known in KNOWN_CONSOLE_ERRORS)]
