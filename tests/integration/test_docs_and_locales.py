"""Help pages and the English locale of every pack node, as a live server serves them to the frontend.

* web/docs/<node_id>.md: the 1.27.10 frontend's node help panel fetches /extensions/<pack>/docs/<node_id>.md (after
  a missing /docs/<node_id>/<locale>.md); each page must name every input and output of the node's schema.
* locales/en/main.json: ComfyUI merges custom_nodes/*/locales/<lang>/main.json into GET /i18n, which the frontend
  merges into its messages (nodeDefs.<id>.display_name / description / inputs.<name>.name|tooltip /
  outputs.<index>.name|tooltip). The English entries must say what the schemas say: this test compares them.
  After a schema change, regenerate the file: DITF_UPDATE_LOCALE=1 pytest tests/integration/test_docs_and_locales.py
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
from pathlib import Path

import pytest

from live_server import PACK_DIR

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "locales" / "en" / "main.json"
NODE_IDS = ("DiTFLoadDiT", "DiTFLoadDiffusersDiT", "DiTFExtractFeatures", "DiTFCorrespondenceMatch", "DiTFWarp",
            "DiTFInspector", "DiTFPropagateMask", "DiTFTrackPoints", "DiTFFuseDINOv2", "DiTFCoSegment", "DiTFFindLayer",
            "DiTFMassiveActivationTransport", "DiTFMassiveActivationDisruption", "DiTFDetailGuidance",
            "DiTFMassiveActivationMask")


@pytest.fixture(scope="module")
def object_info(server):
    info = server.get("/object_info")
    ours = sorted(k for k, v in info.items() if v["python_module"] == f"custom_nodes.{PACK_DIR}")
    assert ours == sorted(NODE_IDS), "a node was added or removed: update NODE_IDS, its doc and the locale"
    return {node_id: info[node_id] for node_id in NODE_IDS}


def expected_locale(object_info: dict) -> dict:
    """The English locale the schemas imply (ComfyUI's nodeDefs format)."""
    nodes = {}
    for node_id, node in object_info.items():
        inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
        nodes[node_id] = {
            "display_name": node["display_name"],
            "description": node["description"],
            "inputs": {name: {"name": name, "tooltip": spec[1]["tooltip"]} for name, spec in inputs.items()},
            "outputs": {str(i): {"name": name, "tooltip": tooltip}
                        for i, (name, tooltip) in enumerate(zip(node["output_name"], node["output_tooltips"]))},
        }
    return {"nodeDefs": nodes}


def test_locale_says_what_the_schemas_say(object_info):
    expected = expected_locale(object_info)
    if os.environ.get("DITF_UPDATE_LOCALE"):
        LOCALE.parent.mkdir(parents=True, exist_ok=True)
        LOCALE.write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert json.loads(LOCALE.read_text(encoding="utf-8")) == expected, (
        "locales/en/main.json differs from the node schemas; regenerate it with DITF_UPDATE_LOCALE=1")


def test_no_locale_string_uses_vue_i18n_linked_syntax():
    # The frontend formats these strings with vue-i18n, where "@" starts a linked message: the bundled frontend
    # (1.27.10) throws "unhandled node type: 7" on "PCK@0.10" in a node description and never finishes loading.
    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    assert [text for text in strings(json.loads(LOCALE.read_text())) if "@" in text] == []


def test_server_serves_the_locale_to_the_frontend(server, object_info):
    served = server.get("/i18n")["en"]["nodeDefs"]
    for node_id in NODE_IDS:
        assert served[node_id] == expected_locale(object_info)["nodeDefs"][node_id], node_id


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_help_page_is_served_and_covers_every_input_and_output(server, object_info, node_id):
    node = object_info[node_id]
    with pytest.raises(urllib.error.HTTPError):  # the frontend asks for a locale page first, then falls back
        server.get(f"/extensions/{PACK_DIR}/docs/{node_id}/en.md")
    page = server.get(f"/extensions/{PACK_DIR}/docs/{node_id}.md").decode("utf-8")
    assert page.startswith(f"# {node['display_name']}\n")
    named = set(re.findall(r"`([a-z_0-9]+)`", page))
    inputs = {**node["input"]["required"], **node["input"].get("optional", {})}
    missing = (set(inputs) | set(node["output_name"])) - named
    assert not missing, f"{node_id}.md does not mention {sorted(missing)}"


def test_only_the_extension_scripts_are_imported_as_extensions(server):
    scripts = sorted(path for path in server.get("/extensions") if f"/{PACK_DIR}/" in path)
    assert scripts == [f"/extensions/{PACK_DIR}/{name}" for name in
                       ("ditf_points.js", "lib/draw.js", "lib/explorer.js", "lib/palette.js", "lib/points_editor.js")]
