"""Test-only ComfyUI nodes for the DiTF integration tier; linked into the test server's custom_nodes, never shipped.

* DiTFTestTinyFluxLoader - ComfyUI's stock loader only recognises full-width Flux, so tiny Flux weights written
  by the test (ComfyUI key layout, unet_config in the file's metadata) are built into a MODEL here;
* DiTFTestRandomConditioning - real text encoders cannot be made tiny; random CONDITIONING of any width;
* DiTFTestFaultyModel - a clone of a MODEL whose first block raises: an error in the middle of a forward pass;
* DiTFTestGate - an output node that holds the queue until the test creates a file (bounded by a timeout);
* DiTFTestTinyClipVision - Load CLIP Vision only accepts full-size DINOv2 / CLIP checkpoints (it picks the config
  by tensor names), so a tiny one (JSON config in the file's metadata) is built here into the same
  ``comfy.clip_vision.ClipVisionModel`` the stock loader returns;
* DiTFTestExplorerPair - puts a synthetic feature pair with a known answer into the pack's explorer cache (as
  Correspondence Match does) and shows its id: the explorer route tested on a full-width 40 x 40 x 3072 pair.
"""

from __future__ import annotations

import json
import os
import sys
import time

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import folder_paths
import torch
from comfy_api.latest import ComfyExtension, io, ui
from safetensors import safe_open
from safetensors.torch import load_file


class TinyFluxLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = [n for n in folder_paths.get_filename_list("diffusion_models") if n.startswith("ditf_test_flux")]
        return io.Schema(node_id="DiTFTestTinyFluxLoader", category="DiTF/test", description="Test only: tiny Flux.",
                         inputs=[io.Combo.Input("name", options=names, tooltip="tiny Flux file")],
                         outputs=[io.Model.Output(tooltip="tiny Flux MODEL")])

    @classmethod
    def execute(cls, name):
        path = folder_paths.get_full_path_or_raise("diffusion_models", name)
        with safe_open(path, framework="pt") as handle:
            unet_config = json.loads(handle.metadata()["ditf_unet_config"])
        model_config = comfy.supported_models.Flux(unet_config)
        model_config.set_inference_dtype(torch.float32, None)
        base = model_config.get_model({}, "")
        base.load_model_weights(load_file(path), "")
        patcher = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                                   offload_device=comfy.model_management.unet_offload_device())
        return io.NodeOutput(patcher)


class TinyClipVision(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = [n for n in folder_paths.get_filename_list("clip_vision") if n.startswith("ditf_test_")]
        return io.Schema(node_id="DiTFTestTinyClipVision", category="DiTF/test", description="Test only: tiny vision.",
                         inputs=[io.Combo.Input("name", options=names, tooltip="tiny CLIP vision / DINOv2 file")],
                         outputs=[io.ClipVision.Output(tooltip="tiny CLIP_VISION")])

    @classmethod
    def execute(cls, name):
        import tempfile

        import comfy.clip_vision

        path = folder_paths.get_full_path_or_raise("clip_vision", name)
        with safe_open(path, framework="pt") as handle:
            config = handle.metadata()["ditf_clip_vision_config"]
        with tempfile.TemporaryDirectory() as folder:
            config_path = os.path.join(folder, "config.json")
            with open(config_path, "w") as handle:
                handle.write(config)
            model = comfy.clip_vision.ClipVisionModel(config_path)
        model.load_sd(load_file(path))
        return io.NodeOutput(model)


class RandomConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiTFTestRandomConditioning", category="DiTF/test", description="Test only: random conditioning.",
            inputs=[io.Int.Input("tokens", default=6, min=1, max=512), io.Int.Input("width", default=32, min=1, max=8192),
                    io.Int.Input("pooled", default=32, min=1, max=8192), io.Int.Input("batch", default=1, min=1, max=64),
                    io.Int.Input("seed", default=0, min=0, max=2**31), io.Float.Input("guidance", default=3.5, min=0.0, max=100.0)],
            outputs=[io.Conditioning.Output(tooltip="random CONDITIONING")])

    @classmethod
    def execute(cls, tokens, width, pooled, batch, seed, guidance):
        generator = torch.Generator().manual_seed(seed)
        context = torch.randn(batch, tokens, width, generator=generator)
        extra = {"pooled_output": torch.randn(batch, pooled, generator=generator), "guidance": guidance}
        return io.NodeOutput([[context, extra]])


class FaultyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DiTFTestFaultyModel", category="DiTF/test", description="Test only: block 0 raises.",
                         inputs=[io.Model.Input("model")], outputs=[io.Model.Output(tooltip="a faulty clone")])

    @classmethod
    def execute(cls, model):
        faulty = model.clone()
        faulty.set_model_patch_replace(_explode, "dit", "double_block", 0)
        return io.NodeOutput(faulty)


def _explode(args, extra):
    raise RuntimeError("simulated fault inside the forward pass")


class Gate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="DiTFTestGate", category="DiTF/test", description="Test only: waits for a file.",
                         is_output_node=True, not_idempotent=True,
                         inputs=[io.String.Input("token", default="gate"), io.Float.Input("timeout", default=60.0, min=0.0, max=600.0)],
                         outputs=[])

    @classmethod
    def execute(cls, token, timeout):
        flag = os.path.join(folder_paths.base_path, f"gate_{token}")
        deadline = time.monotonic() + timeout
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.1)
        return io.NodeOutput(ui=ui.PreviewText(f"gate {token} opened: {os.path.exists(flag)}"))


class ExplorerPair(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiTFTestExplorerPair", category="DiTF/test", is_output_node=True, not_idempotent=True,
            description="Test only: a synthetic pair in the explorer cache; target = source shifted by (dx, dy) cells.",
            inputs=[io.Int.Input("grid", default=40, min=1, max=128), io.Int.Input("channels", default=3072, min=1, max=4096),
                    io.Int.Input("cell", default=16, min=1, max=64), io.Int.Input("dx", default=5, min=0, max=64),
                    io.Int.Input("dy", default=3, min=0, max=64), io.Int.Input("seed", default=0, min=0, max=2**31)],
            outputs=[])

    @classmethod
    def execute(cls, grid, channels, cell, dx, dy, seed):
        pack = _pack_prefix()
        features = sys.modules[f"{pack}.ditf_core.features"]
        mapping = sys.modules[f"{pack}.ditf_core.mapping"].PixelMapping((grid * cell,) * 2, (grid * 16,) * 2, (grid, grid))
        source = torch.randn(1, channels, grid, grid, generator=torch.Generator().manual_seed(seed))
        target = torch.roll(source, shifts=(dy, dx), dims=(2, 3))
        key = sys.modules[f"{pack}.nodes.explorer_cache"].remember(
            features.DiTFeatures(source, mapping), features.DiTFeatures(target, mapping))
        return io.NodeOutput(ui={"ditf_explorer": [key]})


def _pack_prefix() -> str:
    """The module name ComfyUI loaded the DiTF pack under (a path-derived name): its explorer cache is the route's."""
    names = [n for n in sys.modules if n.endswith(".nodes.explorer_cache") and not n.startswith("ditf_pack_")]
    if len(names) != 1:
        raise RuntimeError(f"expected the DiTF pack loaded once, found {names}")
    return names[0].removesuffix(".nodes.explorer_cache")


class TestExtension(ComfyExtension):
    async def get_node_list(self):
        return [TinyFluxLoader, TinyClipVision, RandomConditioning, FaultyModel, Gate, ExplorerPair]


async def comfy_entrypoint():
    return TestExtension()
