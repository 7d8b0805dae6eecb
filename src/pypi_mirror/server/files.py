"""``/packages/…``: the local copy (any tier, hottest first), else 302 or proxy by client IP."""

from __future__ import annotations

import asyncio
import mimetypes

from aiohttp import web

from pypi_mirror.names import METADATA_SUFFIX, is_valid_file_path
from pypi_mirror.server.clientip import fallback_mode
from pypi_mirror.server.metadata import serve_remote_metadata
from pypi_mirror.server.proxy import proxy_stream
from pypi_mirror.server.sendfile import open_regular_file, send_file, small_files
from pypi_mirror.server.state import ServerState

_CONTENT_TYPES = {
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".gz": "application/x-gzip",
    ".bz2": "application/x-bzip2",
    ".egg": "application/zip",
    ".exe": "application/octet-stream",
    METADATA_SUFFIX: "text/plain; charset=utf-8",
}


def content_type_of(filename: str) -> str:
    for suffix, kind in _CONTENT_TYPES.items():
        if filename.endswith(suffix):
            return kind
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def handle_file(
    request: web.BaseRequest, state: ServerState, path: str
) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, headers={"Allow": "GET, HEAD"})
    if not is_valid_file_path(path):
        return web.Response(status=404, text="not a PyPI file path\n")
    response = await _local_or_fallback(request, state, path)
    if request.method == "GET" and response.status < 400:
        state.vote(request, path)
    return response


async def _local_or_fallback(
    request: web.BaseRequest, state: ServerState, path: str
) -> web.StreamResponse:
    content_type = content_type_of(path)
    for tier in state.repo.tiers:
        full = f"{tier.path}/{path}"
        # The hottest tier is a fast disk: open in the loop. Colder tiers may be spinning
        # disks whose metadata can take milliseconds: ask a thread.
        if tier.index == 0:
            local = small_files.open(full)
            if local is None:
                continue
            with local:
                return await local.send(request, content_type=content_type)
        # A file object, not a bare descriptor: if this request is cancelled while the
        # thread opens, the garbage collector still closes it.
        opened = await asyncio.get_running_loop().run_in_executor(None, open_regular_file, full)
        if opened is not None:
            handle, st = opened
            return await send_file(request, handle, st, content_type=content_type)
    if path.endswith(METADATA_SUFFIX):
        # Never redirected: the file host may lack it (see server/metadata.py).
        return await serve_remote_metadata(request, state, path)
    mode = fallback_mode(state.client_ip(request), state.config.fallback)
    if mode == "proxy":
        return await proxy_stream(request, state.session(), state.urls.file(path))
    return web.Response(status=302, headers={"Location": state.urls.redirect_file(path)})
