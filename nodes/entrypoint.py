"""The V3 extension: the list of DiTF nodes ComfyUI registers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .nodes_cosegment import CoSegment
from .nodes_extract import ExtractFeatures
from .nodes_fusion import FuseDINOv2
from .nodes_inspect import MassiveActivationInspector
from .nodes_load import LoadDiffusersDiT, LoadDiT
from .nodes_match import CorrespondenceMatch
from .nodes_video import PropagateMask, TrackPoints
from .nodes_warp import WarpAppearanceTransfer

NODES: list[type[io.ComfyNode]] = [
    LoadDiT, LoadDiffusersDiT, ExtractFeatures, CorrespondenceMatch, WarpAppearanceTransfer, MassiveActivationInspector,
    PropagateMask, TrackPoints, FuseDINOv2, CoSegment,
]


class DiTFExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DiTFExtension:
    return DiTFExtension()
