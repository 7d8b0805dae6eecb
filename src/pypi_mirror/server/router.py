"""One dispatch on the path (cheaper than a router with middlewares on the hot paths), and
the access-log line of every answered request."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from pypi_mirror.server.accesslog import MirrorJsonLines, format_combined
from pypi_mirror.server.files import Files
from pypi_mirror.server.http import Request, Response, redirect, text
from pypi_mirror.server.jsonapi import JsonApi
from pypi_mirror.server.simple import SimpleIndex
from pypi_mirror.server.state import ServerState
from pypi_mirror.server.tally import RequestTally
from pypi_mirror.server.xmlrpc import XmlRpc

MAX_PATH = 1024
ROOT_PACKAGES = "/packages/"


class Router:
    def __init__(
        self,
        state: ServerState,
        simple: SimpleIndex,
        exact: Mapping[str, Callable[[Request], Any]] | None = None,
    ) -> None:
        self.state = state
        self.simple = simple
        # Exact paths answered by their own handler: /metrics, /health, /ready, the status
        # page (at the root and under the prefix). One dict look-up, after the file paths.
        self.exact = dict(exact or {})
        self.files = Files(state)
        self.prefix = state.config.prefix
        self.packages = f"{self.prefix}/packages/"
        self.web_base = state.config.upstream.pypi_url
        self.json_api = JsonApi(state, simple.ondemand)
        self.xmlrpc = XmlRpc(state.config.store)
        self.xmlrpc_paths = (f"{self.prefix}/pypi", f"{self.prefix}/pypi/")

    def close(self) -> None:
        self.json_api.close()
        self.xmlrpc.close()

    def __call__(self, request: Request) -> Response | Any:
        raw = request.path
        if len(raw) > MAX_PATH or "%00" in raw:
            return text(400, "bad request path")
        if raw.startswith(self.packages) or raw.startswith(ROOT_PACKAGES):
            # PyPI file paths hold no escapes; decoding first means an encoded slash or dot
            # is judged by the same strict shape check as a plain one. Files are also served
            # at the host's root /packages/, where PyPI's JSON API puts them (bandersnatch
            # accepts no other file URL path).
            skip = len(self.packages) if raw.startswith(self.packages) else len(ROOT_PACKAGES)
            rest = raw[skip:]
            return self.files.answer(request, unquote(rest) if "%" in rest else rest)
        handler = self.exact.get(raw)
        if handler is not None:
            return handler(request)
        if not raw.startswith(self.prefix + "/"):
            return text(404, "not found")
        if raw in self.xmlrpc_paths:
            return self.xmlrpc(request)
        rest = raw[len(self.prefix) :]
        exact = "%" not in rest
        if not exact:
            try:
                rest = unquote(rest, errors="strict")
            except UnicodeDecodeError:
                return text(400, "bad request path")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rest):  # CR, LF, NUL...
                return text(400, "bad request path")
        if rest == "/simple" or rest.startswith("/simple/"):
            return self.simple.page(request, rest[len("/simple") :], exact)
        if rest.startswith("/web/"):
            return redirect(302, f"{self.web_base}/{rest[len('/web/') :]}")
        # PyPI's layout, /pypi/{name}[/{version}]/json, first: a project named "pypi" is
        # then /pypi/pypi/json (the seed's /{name}/json below keeps /pypi/json for it).
        if rest.startswith("/pypi/"):
            parts = rest[len("/pypi/") :].strip("/").split("/")
            if len(parts) in (2, 3) and parts[-1] == "json" and all(parts):
                version = parts[1] if len(parts) == 3 else None
                return self.json_api.answer(request, parts[0], version, "/pypi")
        parts = rest.strip("/").split("/")
        if len(parts) in (2, 3) and parts[-1] == "json" and all(parts):
            version = parts[1] if len(parts) == 3 else None
            return self.json_api.answer(request, parts[0], version, "")
        return text(404, "not found")


class AccessLog:
    """Writes one line per answered request (a no-op without ``log.path``), and counts it in
    ``tally`` (metrics)."""

    def __init__(self, state: ServerState, tally: RequestTally | None = None) -> None:
        self.state = state
        self.combined = state.config.log.format == "combined"
        self.json_lines = MirrorJsonLines()
        self.tally = tally

    def __call__(self, request: Request, status: int, size: int) -> None:
        now = time.monotonic()
        if self.tally is not None:
            self.tally.record(
                request, status, size, now - request.started if request.started else 0.0
            )
        writer = self.state.access_log
        if writer is None:
            return
        client_ip = self.state.client(request)[1]
        if self.combined:
            line = format_combined(
                moment=time.time(),
                method=request.method or "-",
                path=request.target or "-",
                version=request.version,
                status=status,
                size=size,
                client_ip=client_ip,
                user_agent=request.text_for_log(b"user-agent"),
                referer=request.text_for_log(b"referer"),
            )
        else:
            headers = request.headers
            line = self.json_lines(
                time.time(),
                request.method or "-",
                request.target or "-",
                status,
                size,
                int((now - request.started) * 1000) if request.started else 0,
                client_ip,
                headers.get(b"user-agent"),
                headers.get(b"referer"),
                request.proxied,
            )
        writer.write(line)
