"""The V3 extension: the list of DiTF nodes ComfyUI registers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class DiTFExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []


async def comfy_entrypoint() -> DiTFExtension:
    return DiTFExtension()
