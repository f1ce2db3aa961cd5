"""The pack's HTTP routes on ComfyUI's server (imported only inside ComfyUI, from the pack's ``__init__.py``).

``POST /ditf/explorer/similarity`` (also under ``/api``): the live correspondence explorer; see
:mod:`.explorer_api` for the request, the answer and the errors. Bodies are capped before they are read.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from . import explorer_api


async def explorer_similarity(request: web.Request) -> web.Response:
    limit = explorer_api.MAX_BODY_BYTES
    if request.content_length is not None and request.content_length > limit:
        return _too_large(request.content_length)
    body = bytearray()
    while chunk := await request.content.readany():  # also bounds chunked bodies that declare no length
        body += chunk
        if len(body) > limit:
            return _too_large(len(body))
    # ~1-20 ms of torch work: off the event loop, so the queue and websockets stay responsive
    status, payload = await asyncio.to_thread(explorer_api.handle, bytes(body))
    return web.json_response(payload, status=status)


def _too_large(size: int) -> web.Response:
    message = f"request body is {size} bytes or more; the limit is {explorer_api.MAX_BODY_BYTES}"
    return web.json_response({"error": message}, status=413)


# main.py imports ComfyUI's `server` and creates the PromptServer before it loads custom nodes. ComfyUI used as a
# library (scripts, in-process tests) has no server, and importing `server` there has side effects: skip.
if "server" in sys.modules:
    from server import PromptServer

    PromptServer.instance.routes.post(explorer_api.PATH)(explorer_similarity)
