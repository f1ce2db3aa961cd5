"""A live ComfyUI server for tests: ``main.py --cpu`` in a temporary base directory, on a free port.

Every wait is bounded. The server's output goes to ``<base>/server.log``; ``stop`` always ends the process.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

PACK_DIR = "comfyui-ditf"  # the pack's folder in custom_nodes (the registry name; any folder name must work)
INPUT_IMAGES = ("example.png", "example_2.png")  # the names the example workflows' LoadImage nodes use


class ComfyServer:
    def __init__(self, comfyui_path: str, base_dir: Path, python: str = sys.executable,
                 front_end_root: str | None = None) -> None:
        self.comfyui_path = comfyui_path
        self.base_dir = Path(base_dir)
        self.python = python
        self.front_end_root = front_end_root  # a frontend's static/ folder served instead of the installed one
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "server.log"
        self.process: subprocess.Popen | None = None
        self.client_id = str(uuid.uuid4())

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until /object_info answers; returns the start-up time in seconds."""
        command = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base_dir),
        ]
        if self.front_end_root:
            command += ["--front-end-root", str(self.front_end_root)]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.comfyui_path, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during start-up:\n{self.log()[-4000:]}")
            try:
                self.get("/object_info", timeout=5)
                return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- HTTP ------------------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body = response.read()
            return json.loads(body) if "json" in response.headers.get("Content-Type", "") else body

    def post(self, path: str, payload: dict, timeout: float = 30.0) -> tuple[int, dict]:
        data = json.dumps(payload).encode()  # NaN stays the NaN literal, as a browser could send it
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return response.status, (json.loads(body) if body else {})
        except urllib.error.HTTPError as error:
            body = error.read()
            return error.code, (json.loads(body) if body else {})

    def queue(self, prompt: dict) -> tuple[int, dict]:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def wait(self, prompt_id: str, timeout: float = 240.0) -> dict:
        """The /history entry of a finished prompt."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 240.0) -> dict:
        """Queue a prompt that must be accepted; return its history entry (successful or not)."""
        status, response = self.queue(prompt)
        assert status == 200, f"/prompt refused the prompt: {json.dumps(response)[:2000]}"
        return self.wait(response["prompt_id"], timeout)

    def image(self, info: dict) -> bytes:
        query = urllib.parse.urlencode({k: info[k] for k in ("filename", "subfolder", "type")})
        return self.get(f"/view?{query}")

    def running(self) -> bool:
        return bool(self.get("/queue").get("queue_running"))


def messages(entry: dict, kind: str) -> list[dict]:
    """The payloads of one kind of execution message in a /history entry (execution_cached, _error, ...)."""
    return [data for name, data in entry["status"].get("messages", []) if name == kind]


def succeeded(entry: dict) -> bool:
    return entry["status"].get("status_str") == "success"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
