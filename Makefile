# Quick start: `make demo` runs the main job, `make test` runs the tests. Both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-comfyui clean

demo: $(VENV)/.installed
	$(BIN)/python -m ditf_core demo --out ditf_demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# The ComfyUI integration tier (skipped by `make test`), with ComfyUI's own Python, where this package is installed:
#   make test-comfyui COMFYUI_PATH=/path/to/ComfyUI COMFY_PYTHON=/path/to/comfy-venv/bin/python
test-comfyui:
	COMFYUI_PATH=$(COMFYUI_PATH) $(COMFY_PYTHON) -m pytest tests/integration -rs

# torch goes in first so that nothing pulls a different build in as a dependency.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# The default output folders of the commands (the eval cache .ditf_cache/ is kept: slow to redo).
clean:
	rm -rf $(VENV) ditf_demo ditf_features ditf_inspect ditf_propagate ditf_track ditf_davis ditf_tapvid ditf_cosegment
