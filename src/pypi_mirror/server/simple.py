"""The simple index (``/simple/``, ``/simple/{name}/``) and the JSON API endpoints."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from pypi_mirror.names import is_valid_project_name, normalize
from pypi_mirror.server.negotiate import TEXT_HTML, V1_HTML, V1_JSON, choose_content_type
from pypi_mirror.server.ondemand import OnDemandIndex, UpstreamUnavailable
from pypi_mirror.server.proxy import proxy_stream
from pypi_mirror.server.sendfile import open_regular_file, send_file, small_files
from pypi_mirror.server.state import ServerState

_HTML_SERIAL = re.compile(rb"<!--SERIAL (\d+)-->\s*$")
_JSON_SERIAL = re.compile(rb'"_last-serial"\s*:\s*"?(\d+)')
_VERSION_RE = re.compile(r"[A-Za-z0-9._+!-]{1,128}")


class SerialCache:
    """X-PyPI-Last-Serial of a page, read from the page itself once per page version."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int], str] = {}

    def get(
        self, path: str, st: os.stat_result, handle_path: Path | str, is_json: bool
    ) -> str | None:
        key = (path, st.st_mtime_ns)
        serial = self._known.get(key)
        if serial is None:
            serial = _read_serial(handle_path, is_json, st.st_size)
            if len(self._known) > 50_000:
                self._known.clear()
            self._known[key] = serial
        return serial or None


def _read_serial(path: Path | str, is_json: bool, size: int) -> str:
    try:
        with open(path, "rb") as handle:
            if is_json:
                head = handle.read(256)
                match = _JSON_SERIAL.search(head)
            else:
                handle.seek(max(size - 64, 0))
                match = _HTML_SERIAL.search(handle.read())
    except OSError:
        return ""
    return match.group(1).decode() if match else ""


def _redirect(location: str, query: str) -> web.Response:
    return web.Response(
        status=301, headers={"Location": f"{location}?{query}" if query else location}
    )


class SimpleIndex:
    def __init__(self, state: ServerState, ondemand: OnDemandIndex) -> None:
        self.state = state
        self.ondemand = ondemand
        self.prefix = state.config.prefix
        self.serials = SerialCache()
        # Small memos of pure functions of request strings (bounded: clients choose them).
        self._canonical: dict[str, str] = {}  # valid name as asked → its normalised form
        self._chosen: dict[tuple[str | None, str | None], str | None] = {}  # negotiation
        self._pages: dict[str, tuple[str, str]] = {}  # name → (HTML page, JSON page) paths

    async def page(self, request: web.BaseRequest, rest: str) -> web.StreamResponse:
        """``rest`` is what follows ``{prefix}/simple``."""
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        query = request.raw_path.partition("?")[2]
        if rest in ("", "/"):
            if rest == "":
                return _redirect(f"{self.prefix}/simple/", query)
            return await self._root(request)
        name = rest.strip("/")
        canonical = self._canonical.get(name)
        if canonical is None:
            if "/" in name or not is_valid_project_name(name):
                return web.Response(status=404, text="no such project\n")
            canonical = _remember(self._canonical, name, normalize(name))
        if name != canonical or not rest.endswith("/"):
            return _redirect(f"{self.prefix}/simple/{canonical}/", query)
        return await self._project(request, canonical)

    def _negotiate(self, request: web.BaseRequest) -> str | None:
        # The query is parsed only when there is one: most installers send none.
        fmt = request.query.get("format") if request.query_string else None
        if fmt:  # an unescaped "+json" arrives as " json" after query decoding
            fmt = fmt.replace(" ", "+")
        key = (request.headers.get("Accept"), fmt)
        try:
            return self._chosen[key]
        except KeyError:
            return _remember(self._chosen, key, choose_content_type(*key))

    async def _root(self, request: web.BaseRequest) -> web.StreamResponse:
        content_type = self._negotiate(request)
        if content_type is None:
            return _not_acceptable()
        repo = self.state.repo
        target = repo.root_json if content_type == V1_JSON else repo.root_html
        headers = {"Vary": "Accept, Accept-Encoding"}
        candidates = [(target, None)]
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            candidates.insert(0, (target.with_name(target.name + ".gz"), "gzip"))
        for path, encoding in candidates:
            opened = open_regular_file(str(path))
            if opened is None:
                continue
            handle, st = opened
            serial = (
                self.serials.get(str(target), os.stat(target), target, True)
                if target.exists()
                else None
            )
            if serial:
                headers["X-PyPI-Last-Serial"] = serial
            if encoding:
                headers["Content-Encoding"] = encoding
            return await send_file(request, handle, st, content_type=content_type, headers=headers)
        return web.Response(status=404, text="the root index has not been generated yet\n")

    async def _project(self, request: web.BaseRequest, name: str) -> web.StreamResponse:
        content_type = self._negotiate(request)
        if content_type is None:
            return _not_acceptable()
        try:
            present = await self.ondemand.ensure(name)
        except UpstreamUnavailable as error:
            return web.Response(status=error.status, text="upstream unavailable\n")
        if not present:
            return web.Response(status=404, text="no such project\n")
        is_json = content_type == V1_JSON
        paths = self._pages.get(name)
        if paths is None:
            repo = self.state.repo
            paths = (str(repo.project_html(name)), str(repo.project_json(name)))
            _remember(self._pages, name, paths)
        target = paths[1] if is_json else paths[0]
        local = small_files.open(target)
        if local is None:  # removed by a sync between the check and now
            return web.Response(status=404, text="no such project\n")
        with local:
            headers = {"Vary": "Accept"}
            serial = self.serials.get(target, local.st, target, is_json)
            if serial:
                headers["X-PyPI-Last-Serial"] = serial
            return await local.send(request, content_type=content_type, headers=headers)

    async def json_api(self, request: web.BaseRequest, parts: list[str]) -> web.StreamResponse:
        """``/{name}/json`` (local copy, else upstream) and ``/{name}/{version}/json``."""
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        name = parts[0]
        if not is_valid_project_name(name):
            return web.Response(status=404, text="no such project\n")
        canonical = normalize(name)
        if canonical != name:
            return _redirect(
                f"{self.prefix}/{canonical}/{'/'.join(parts[1:])}",
                request.raw_path.partition("?")[2],
            )
        if len(parts) == 3:
            version = parts[1]
            if not _VERSION_RE.fullmatch(version):
                return web.Response(status=404, text="no such release\n")
            return await proxy_stream(
                request, self.state.session(), self.state.urls.release_json(canonical, version)
            )
        target = self.state.repo.pypi_json(canonical)
        opened = open_regular_file(str(target))
        if opened is None:
            return await proxy_stream(
                request, self.state.session(), self.state.urls.project_json(canonical)
            )
        handle, st = opened
        headers = {}
        page = self.state.repo.project_json(canonical)
        try:
            serial = self.serials.get(str(page), os.stat(page), page, True)
        except FileNotFoundError:
            serial = None
        if serial:
            headers["X-PyPI-Last-Serial"] = serial
        return await send_file(
            request, handle, st, content_type="application/json", headers=headers
        )


_MEMO_LIMIT = 10_000


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def _not_acceptable() -> web.Response:
    return web.Response(
        status=406,
        text=f"acceptable types: {TEXT_HTML}, {V1_HTML}, {V1_JSON}\n",
        headers={"Vary": "Accept"},
    )
