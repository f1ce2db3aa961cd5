"""The README's Python snippets run as they are (on the demo DiT and the bundled sample images)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    snippets = python_snippets()
    assert len(snippets) >= 3  # features, matches, warps
    monkeypatch.chdir(tmp_path)  # they write a.safetensors and a_on_b.png
    # In order, in one script, like a reader pasting them into one session.
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n".join(snippets))
    namespace = runpy.run_path(str(script), run_name="readme_snippets")
    assert (tmp_path / "a.safetensors").is_file() and (tmp_path / "a_on_b.png").is_file()
    assert namespace["spline"].shape == (1, 3, namespace["height"], namespace["width"])
    assert namespace["inliers"].sum() >= 3
