"""Packaging rules: dependency lists agree, the core never imports ComfyUI, the pack imports outside ComfyUI."""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "nodes", "execution")


def test_requirements_txt_mirrors_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert requirements == project["dependencies"]
    assert "torch" in requirements  # listed, never pinned: ComfyUI provides it


def test_comfy_registry_metadata():
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui"} <= comfy.keys()


def test_core_never_imports_comfyui():
    offenders = []
    for path in (ROOT / "ditf_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in HOST_MODULES]
    assert offenders == []


def test_pack_imports_outside_comfyui_under_any_folder_name():
    """ComfyUI imports the checkout folder as a package; without ComfyUI that must not fail."""
    spec = importlib.util.spec_from_file_location(
        "ditf_pack_under_test", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    assert module.WEB_DIRECTORY == "./web"
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # V3 only: ComfyUI would ignore comfy_entrypoint


def test_pack_file_imports_as_a_plain_module():
    """pytest imports the root ``__init__.py`` with no parent package when the checkout's folder is named like the
    registry entry (``comfyui-ditf``, not an identifier): that must not fail collection."""
    spec = importlib.util.spec_from_file_location("__init__", ROOT / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web"
    assert not hasattr(module, "comfy_entrypoint")
