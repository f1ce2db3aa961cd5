"""Load DiT nodes: a DITF_MODEL from the MODEL / VAE / CLIP already loaded, or from a diffusers folder."""

from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io
from typing_extensions import override

from ..ditf_core.pipeline import load_pipeline, resolve_device_dtype
from . import comfy_host
from .checks import check_choice
from .model import DiffusersHost, DiTFModel
from .types import DiTFModelType

CATEGORY = "DiTF"
WEIGHT_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MODEL_TOOLTIP = "The DITF_MODEL: your DiT ready for Extract DiTF Features (it shares the loaded weights)."
SUMMARY_TOOLTIP = "Family, block count, split point and default settings, as text (wire it to a text preview)."


class LoadDiT(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFLoadDiT",
            display_name="Load DiT (DiTF)",
            category=CATEGORY,
            description="Turn the Flux or SD3/SD3.5 MODEL you already loaded, with its VAE (and optionally its CLIP), "
            "into a DiTF feature extractor without loading anything twice.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux (dev/schnell) or SD3/SD3.5 MODEL from a checkpoint or "
                               "diffusion model loader. It is never modified: DiTF works on a clone."),
                io.Vae.Input("vae", tooltip="The model's own VAE (16 latent channels): Flux ae.safetensors, or the "
                             "SD3/SD3.5 checkpoint's VAE."),
                io.Clip.Input("clip", optional=True, tooltip="Optional: the model's text encoders, to condition on the "
                              "prompt typed in Extract DiTF Features. Without it, extraction uses zero conditioning "
                              "unless you connect a CONDITIONING."),
            ],
            outputs=[
                DiTFModelType.Output(display_name="ditf_model", tooltip=MODEL_TOOLTIP),
                io.String.Output(display_name="summary", tooltip=SUMMARY_TOOLTIP),
            ],
        )

    @classmethod
    @override
    def execute(cls, model, vae, clip=None) -> io.NodeOutput:
        ditf_model = DiTFModel(comfy_host.ComfyHost.create(model, vae, clip))
        return io.NodeOutput(ditf_model, ditf_model.summary())


class LoadDiffusersDiT(io.ComfyNode):
    @classmethod
    @override
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTFLoadDiffusersDiT",
            display_name="Load DiT from diffusers folder (DiTF)",
            category=CATEGORY,
            description="Load a Flux or SD3/SD3.5 diffusers folder from models/diffusers as a DiTF feature extractor, "
            "for when you have no ComfyUI checkpoint of it.",
            inputs=[
                io.Combo.Input("folder", options=diffusers_folders(), tooltip="A diffusers pipeline folder (with "
                               "model_index.json, transformer/ and vae/) under ComfyUI's models/diffusers."),
                io.Boolean.Input("text_encoders", default=True, tooltip="Also load the folder's text encoders so "
                                 "prompts can be used (T5-XXL needs ~9.5 GB); off: zero conditioning or a "
                                 "CONDITIONING input."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="auto", tooltip="auto: bfloat16 on "
                               "a GPU, float32 on the CPU."),
            ],
            outputs=[
                DiTFModelType.Output(display_name="ditf_model", tooltip=MODEL_TOOLTIP),
                io.String.Output(display_name="summary", tooltip=SUMMARY_TOOLTIP),
            ],
        )

    @classmethod
    @override
    def validate_inputs(cls, folder=None, weight_dtype=None) -> bool | str:
        try:
            if folder is not None:
                resolve_diffusers_folder(folder)
            if weight_dtype is not None:
                check_choice("weight_dtype", weight_dtype, list(WEIGHT_DTYPES))
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    @override
    def execute(cls, folder: str, text_encoders: bool = True, weight_dtype: str = "auto") -> io.NodeOutput:
        path = resolve_diffusers_folder(folder)
        check_choice("weight_dtype", weight_dtype, list(WEIGHT_DTYPES))
        device, dtype = resolve_device_dtype(comfy_host.torch_device(), WEIGHT_DTYPES[weight_dtype])
        # This model lives outside ComfyUI's model management: make room for it first.
        comfy_host.make_room(_folder_bytes(path, text_encoders), device)
        pipeline = load_pipeline(path, text_encoders=bool(text_encoders), device=device, dtype=dtype)
        ditf_model = DiTFModel(DiffusersHost(pipeline))
        return io.NodeOutput(ditf_model, ditf_model.summary())


def diffusers_folders() -> list[str]:
    """Folders holding a model_index.json under ComfyUI's models/diffusers paths, relative to them."""
    found = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(root):
            continue
        for path, _, files in os.walk(root, followlinks=True):
            if "model_index.json" in files and os.path.abspath(path) != os.path.abspath(root):
                found.append(os.path.relpath(path, root))
    return sorted(set(found))


def resolve_diffusers_folder(name: str) -> str:
    """The absolute path of a listed folder. Names come from shared workflows, i.e. untrusted input: only names
    found by :func:`diffusers_folders` resolve, never a free-form path."""
    if not isinstance(name, str) or name not in diffusers_folders():
        raise ValueError(
            f"folder {name!r} is not a diffusers folder under models/diffusers; put a Flux or SD3/SD3.5 diffusers "
            "folder (with model_index.json) there and press Refresh"
        )
    for root in folder_paths.get_folder_paths("diffusers"):
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, "model_index.json")):
            return path
    raise ValueError(f"folder {name!r} disappeared from models/diffusers")


def _folder_bytes(path: str, text_encoders: bool) -> int:
    """Bytes of the weights that will be loaded (an upper bound: dtype conversion may halve them)."""
    parts = ["transformer", "vae"] + (["text_encoder", "text_encoder_2", "text_encoder_3"] if text_encoders else [])
    total = 0
    for part in parts:
        for root, _, files in os.walk(os.path.join(path, part)):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(".safetensors"))
    return total
