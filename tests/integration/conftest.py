"""The ComfyUI integration tier: runs when COMFYUI_PATH points at a ComfyUI checkout, says it skipped otherwise.

Run it with ComfyUI's own Python, after ``pip install -e .`` there:
    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/integration -rs

Tests marked ``comfyui`` need ComfyUI (in-process or a live ``main.py --cpu`` server); the others exercise the
pack's host-agnostic modules and run everywhere. ComfyUI owns the top-level module name ``nodes``, so the pack
is always loaded under an explicit alias, never by putting the repository on ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
# The newest frontend's static/ folder (comfyui-frontend-package, unpacked; .ci/run provides it) and its version.
NEW_FRONTEND_ROOT = os.environ.get("DITF_NEW_FRONTEND_ROOT", "")
NEW_FRONTEND_VERSION = os.environ.get("DITF_NEW_FRONTEND_VERSION", "")
SKIP_REASON = "COMFYUI_PATH is not set: ComfyUI integration tier skipped (set it to a ComfyUI 0.3.64 checkout to run it)"
# CI sets this: then the tier must really run, and any skipped test (no ComfyUI, no browser, no new frontend) fails it.
REQUIRE_COMFYUI = os.environ.get("DITF_REQUIRE_COMFYUI", "") not in ("", "0")
_skipped: list[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a ComfyUI checkout at COMFYUI_PATH (skipped otherwise)")
    if REQUIRE_COMFYUI and not COMFYUI_PATH:
        raise pytest.UsageError("DITF_REQUIRE_COMFYUI is set but COMFYUI_PATH is not: the ComfyUI tier cannot run")


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_COMFYUI and _skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    if COMFYUI_PATH:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "comfyui" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if not COMFYUI_PATH:
        terminalreporter.write_line(f"NOTE: {SKIP_REASON}", yellow=True)
    if REQUIRE_COMFYUI and _skipped:
        terminalreporter.write_line(
            f"FAILED: DITF_REQUIRE_COMFYUI is set and {len(_skipped)} test(s) skipped: {', '.join(_skipped[:10])}",
            red=True,
        )


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI importable in this process, on the CPU (comfy.model_management reads the flag at import)."""
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    path = str(Path(COMFYUI_PATH).resolve())
    if not Path(path, "comfy", "model_management.py").is_file():
        pytest.fail(f"COMFYUI_PATH={COMFYUI_PATH} is not a ComfyUI checkout (no comfy/model_management.py)")
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401

    return path


@pytest.fixture(scope="session")
def pack(comfy, tmp_path_factory):
    """The pack imported the way ComfyUI imports it: its folder as a package (here under an alias)."""
    import folder_paths

    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    module = load_package("ditf_pack_inprocess", execute=True)
    assert hasattr(module, "comfy_entrypoint"), "the pack did not export comfy_entrypoint inside ComfyUI"
    return module


@pytest.fixture(scope="session")
def offline_pack():
    """The pack's host-agnostic node modules, importable without ComfyUI: the package objects are registered
    without running their ``__init__`` (which imports ComfyUI's API)."""
    return load_package("ditf_pack_offline", execute=False)


def load_package(alias: str, *, execute: bool) -> types.ModuleType:
    if alias in sys.modules:
        return sys.modules[alias]
    spec = importlib.util.spec_from_file_location(alias, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    if execute:
        spec.loader.exec_module(module)
        return module
    nodes_spec = importlib.util.spec_from_file_location(
        f"{alias}.nodes", ROOT / "nodes" / "__init__.py", submodule_search_locations=[str(ROOT / "nodes")]
    )
    sys.modules[nodes_spec.name] = importlib.util.module_from_spec(nodes_spec)
    importlib.import_module(f"{alias}.ditf_core")
    return module


@pytest.fixture(scope="session")
def server(comfy, tmp_path_factory):
    """A live ComfyUI (``main.py --cpu``) in a temporary base directory: custom_nodes holds this pack (a link to the
    checkout) and the test-only nodes, models/ the tiny checkpoints written here, input/ two sample images."""
    from ditf_core.demo_model import build_demo_dit
    from ditf_core.samples import sample_pair

    from live_server import INPUT_IMAGES, PACK_DIR, ComfyServer
    from tiny_models import write_server_models

    base = tmp_path_factory.mktemp("comfy_base")
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / PACK_DIR).symlink_to(ROOT, target_is_directory=True)
    (custom_nodes / "ditf_test_nodes").symlink_to(Path(__file__).parent / "fixture_pack", target_is_directory=True)
    names = write_server_models(base / "models", build_demo_dit(0))
    (base / "input").mkdir()
    for name, image in zip(INPUT_IMAGES, sample_pair()[:2]):
        image.save(base / "input" / name)
    instance = ComfyServer(comfy, base)
    instance.startup_seconds = instance.start()
    instance.files = names
    yield instance
    instance.stop()



@pytest.fixture(scope="session")
def new_frontend_server(request, tmp_path_factory):
    """A second live ComfyUI serving the newest frontend (``--front-end-root $DITF_NEW_FRONTEND_ROOT``), never
    installed into ComfyUI's Python. It shares the first server's pack, models and input images; its user
    settings, temp and output folders are its own (ComfyUI empties temp/ on start-up)."""
    from live_server import ComfyServer

    if not NEW_FRONTEND_ROOT:
        pytest.skip("DITF_NEW_FRONTEND_ROOT is not set: newest-frontend browser tests skipped (set it to the static/ "
                    "folder of an unpacked comfyui-frontend-package wheel, and DITF_NEW_FRONTEND_VERSION)")
    root = Path(NEW_FRONTEND_ROOT)
    if not (root / "index.html").is_file():
        pytest.fail(f"DITF_NEW_FRONTEND_ROOT={root} is not a frontend's static/ folder (no index.html)")
    server = request.getfixturevalue("server")  # after the checks: a skip starts no server
    base = tmp_path_factory.mktemp("comfy_base_new_frontend")
    for shared in ("custom_nodes", "models", "input"):
        (base / shared).symlink_to(server.base_dir / shared, target_is_directory=True)
    instance = ComfyServer(server.comfyui_path, base, front_end_root=str(root))
    instance.startup_seconds = instance.start()
    instance.files = server.files
    instance.frontend_version = NEW_FRONTEND_VERSION or frontend_version(root)
    if not instance.frontend_version:
        pytest.fail(f"set DITF_NEW_FRONTEND_VERSION: no version found for the frontend in {root}")
    yield instance
    instance.stop()


def frontend_version(static: Path) -> str:
    """The version in a comfyui_frontend_package's metadata next to its static/ folder ("" when there is none)."""
    for metadata in static.parent.parent.glob("comfyui_frontend_package-*.dist-info/METADATA"):
        for line in metadata.read_text().splitlines():
            if line.startswith("Version: "):
                return line.removeprefix("Version: ")
    return ""
