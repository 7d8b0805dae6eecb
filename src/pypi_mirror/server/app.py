"""The request handler: one dispatch on the path (cheaper than a router with middlewares on
the hot paths), the access-log hook, and the error boundary."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from pypi_mirror.server.accesslog import format_combined, format_mirror_json
from pypi_mirror.server.files import handle_file
from pypi_mirror.server.simple import SimpleIndex
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

MAX_PATH = 1024


class Handler:
    def __init__(self, state: ServerState, simple: SimpleIndex) -> None:
        self.state = state
        self.simple = simple
        self.prefix = state.config.prefix

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        if len(raw) > MAX_PATH or "\x00" in raw or "%00" in raw:
            return web.Response(status=400, text="bad request path\n")
        if not raw.startswith(self.prefix + "/"):
            return web.Response(status=404, text="not found\n")
        rest = raw[len(self.prefix) :]
        if rest.startswith("/packages/"):
            # PyPI file paths hold no escapes; decoding first means an encoded slash or dot
            # is judged by the same strict shape check as a plain one.
            return await handle_file(request, self.state, unquote(rest[len("/packages/") :]))
        if "%" in rest:
            rest = unquote(rest)
        if rest == "/simple" or rest.startswith("/simple/"):
            return await self.simple.page(request, rest[len("/simple") :])
        if rest.startswith("/web/"):
            target = rest[len("/web/") :]
            return web.Response(
                status=302, headers={"Location": f"{self.state.config.upstream.pypi_url}/{target}"}
            )
        parts = rest.strip("/").split("/")
        if len(parts) in (2, 3) and parts[-1] == "json" and all(parts):
            return await self.simple.json_api(request, parts)
        return web.Response(status=404, text="not found\n")


def access_logger_class(state: ServerState) -> type[AbstractAccessLogger]:
    """aiohttp calls ``log`` once a response is fully sent: true durations and sizes."""
    writer = state.access_log
    combined = state.config.log.format == "combined"

    class MirrorAccessLogger(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return writer is not None

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
            if writer is None:
                return
            address = state.client_ip(request)
            client = str(address) if address is not None else (request.remote or "-")
            size: Any = request.get("bytes_sent", response.body_length)
            headers = request.headers
            if combined:
                line = format_combined(
                    moment=time.time(),
                    method=request.method,
                    path=request.raw_path,
                    version=f"{request.version.major}.{request.version.minor}",
                    status=response.status,
                    size=int(size),
                    client_ip=client,
                    user_agent=headers.get("User-Agent", ""),
                    referer=headers.get("Referer", ""),
                )
            else:
                line = format_mirror_json(
                    moment=time.time(),
                    method=request.method,
                    path=request.raw_path,
                    status=response.status,
                    size=int(size),
                    duration_ms=int(time_ * 1000),
                    client_ip=client,
                    user_agent=headers.get("User-Agent", ""),
                    referer=headers.get("Referer", ""),
                    proxied=bool(request.get("proxied")),
                )
            writer.write(line)

    return MirrorAccessLogger
