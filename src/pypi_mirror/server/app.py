"""The request handler: one dispatch on the path (cheaper than a router with middlewares on
the hot paths), the access-log hook, and the error boundary."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from pypi_mirror.server.accesslog import format_entry
from pypi_mirror.server.files import handle_file
from pypi_mirror.server.sendfile import STATUS_KEY, WRITE_TIMEOUT_KEY
from pypi_mirror.server.simple import SimpleIndex
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

MAX_PATH = 1024


class Handler:
    def __init__(self, state: ServerState, simple: SimpleIndex) -> None:
        self.state = state
        self.simple = simple
        self.prefix = state.config.prefix
        self.write_timeout = state.config.timeouts.write

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        request[WRITE_TIMEOUT_KEY] = self.write_timeout
        started = time.monotonic()
        try:
            return await self.dispatch(request)
        except (ConnectionError, asyncio.CancelledError):
            # aiohttp logs only completed responses; an aborted download is still a line
            # (nginx's 499 when the client left before any answer).
            status = request.get(STATUS_KEY, 499)
            size = request.get("bytes_sent", 0)
            write_access_entry(self.state, request, status, size, time.monotonic() - started)
            raise

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
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


def write_access_entry(
    state: ServerState, request: web.BaseRequest, status: int, size: int, seconds: float
) -> None:
    writer = state.access_log
    if writer is None:
        return
    headers = request.headers
    writer.write(
        format_entry(
            state.config.log.format,
            method=request.method,
            path=request.raw_path,
            version=f"{request.version.major}.{request.version.minor}",
            status=status,
            size=size,
            seconds=seconds,
            client_ip=state.client(request)[1],
            user_agent=headers.get("User-Agent", ""),
            referer=headers.get("Referer", ""),
            proxied=bool(request.get("proxied")),
        )
    )


def access_logger_class(state: ServerState) -> type[AbstractAccessLogger]:
    """aiohttp calls ``log`` once a response is fully sent: true durations and sizes."""
    enabled = state.access_log is not None

    class MirrorAccessLogger(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return enabled

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
            size = request.get("bytes_sent", response.body_length)
            write_access_entry(state, request, response.status, int(size), time_)

    return MirrorAccessLogger
