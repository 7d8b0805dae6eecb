"""The simple index (``/simple/``, ``/simple/{name}/``) and the JSON API endpoints.

A page the mirror holds is answered at once, in the event loop; a stale on-demand page is
answered as it is while one refresh runs in the background (stale-while-revalidate); only a
page the mirror does not hold yet makes the request wait for the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any
from urllib.parse import parse_qs

from pypi_mirror.filters import filters_of
from pypi_mirror.names import is_valid_project_name, normalize
from pypi_mirror.server.canonical import canonical_simple
from pypi_mirror.server.cooldown import cooldown_of
from pypi_mirror.server.http import (
    CORS,
    Request,
    Response,
    method_not_allowed,
    preflight,
    redirect,
    text,
)
from pypi_mirror.server.localfile import LocalFile, answer_file, small_files
from pypi_mirror.server.negotiate import TEXT_HTML, V1_HTML, V1_JSON, choose_content_type
from pypi_mirror.server.ondemand import OnDemandIndex, UpstreamUnavailable
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

_HTML_SERIAL = re.compile(rb"<!--SERIAL (\d+)-->\s*$")
_JSON_SERIAL = re.compile(rb'"_last-serial"\s*:\s*"?(\d+)')
_MEMO_LIMIT = 10_000
MEMO_KEY_LIMIT = 256  # longer client strings are worked out each time, never kept


def _read_serial_of(local: LocalFile, is_json: bool) -> str:
    """The serial a page carries (JSON: near its start; HTML: a comment at its end)."""
    if local.body is not None:
        data = local.body[:256] if is_json else local.body[-64:]
    else:
        size = local.st.st_size
        try:
            data = (
                os.pread(local.fd, 256, 0) if is_json else os.pread(local.fd, 64, max(size - 64, 0))
            )
        except OSError:
            return ""
    match = (_JSON_SERIAL if is_json else _HTML_SERIAL).search(data)
    return match.group(1).decode() if match else ""


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


def _not_acceptable() -> Response:
    return text(406, f"acceptable types: {TEXT_HTML}, {V1_HTML}, {V1_JSON}", [("Vary", "Accept")])


def _with_query(location: str, query: str) -> str:
    return f"{location}?{query}" if query else location


class SimpleIndex:
    def __init__(self, state: ServerState, ondemand: OnDemandIndex) -> None:
        self.state = state
        self.ondemand = ondemand
        self.filters = filters_of(state.config.filters)
        self.cooldown = cooldown_of(state)
        self.prefix = state.config.prefix
        self._root_serials: dict[tuple[int, int], str] = {}  # root JSON version → its serial
        self._refreshing: set[asyncio.Future[bool]] = set()
        # Memos of pure functions of request strings (bounded: clients choose them).
        self._canonical: dict[str, str] = {}  # valid name as asked → its normalised form
        self._chosen: dict[tuple[str | None, str | None], str | None] = {}  # negotiation
        self._pages: dict[str, tuple[str, str]] = {}  # name → (HTML page, JSON page) paths
        # (inode, mtime) of a page version → its extra headers (the serial is in the page)
        self._extra: dict[tuple[int, int], list[tuple[str, str]]] = {}
        self.page_ttl = state.config.upstream.page_ttl
        self._sync_owned: dict[tuple[str, int], bool] = {}  # old page versions sync keeps
        # Headers as PyPI sends them on index pages (precomputed: the hot path).
        self.page_headers = (
            ("Cache-Control", f"max-age={state.config.page_max_age}, public"),
            CORS,
        )

    def page(self, request: Request, rest: str, exact: bool = True) -> Response | Any:
        """``rest`` is what follows ``{prefix}/simple``; ``exact`` is False when the path came
        with escapes (then even a canonical-looking spelling is redirected)."""
        request.route = "page"
        if request.method not in ("GET", "HEAD"):
            return preflight() if request.method == "OPTIONS" else method_not_allowed()
        if exact:
            if rest == "/":
                return self._root(request)
            name = rest[1:-1]
            if rest.endswith("/") and name:
                canonical = self._canonical.get(name)
                if canonical is None and is_valid_project_name(name):
                    canonical = _remember(self._canonical, name, normalize(name))
                if canonical == name:
                    return self._project(request, name)
        location = canonical_simple(self.prefix, rest)
        if location is None:
            return text(404, "no such project")
        return redirect(301, _with_query(location, request.query))

    def _negotiate(self, request: Request) -> str | None:
        fmt = None
        if request.query:  # parsed only when there is one: most installers send none
            values = parse_qs(request.query).get("format")
            if values:  # an unescaped "+json" arrives as " json" after query decoding
                fmt = values[0].replace(" ", "+")
        key = (request.header(b"accept"), fmt)
        try:
            return self._chosen[key]
        except KeyError:
            chosen = choose_content_type(*key)
        if len(key[0] or "") + len(fmt or "") <= MEMO_KEY_LIMIT:  # clients send a few short ones
            _remember(self._chosen, key, chosen)
        return chosen

    def _root(self, request: Request) -> Response:
        request.route = "root"
        content_type = self._negotiate(request)
        if content_type is None:
            return _not_acceptable()
        repo = self.state.repo
        target = str(repo.root_json if content_type == V1_JSON else repo.root_html)
        headers = [("Vary", "Accept, Accept-Encoding"), *self.page_headers]
        candidates = [(target, "")]
        if "gzip" in (request.header(b"accept-encoding") or ""):
            candidates.insert(0, (target + ".gz", "gzip"))
        for path, encoding in candidates:
            local = small_files.open(path)
            if local is None:
                continue
            serial = self._root_serial()
            if serial:
                headers.append(("X-PyPI-Last-Serial", serial))
            if encoding:
                headers.append(("Content-Encoding", encoding))
            return answer_file(request, local, content_type, headers)
        return text(404, "the root index has not been generated yet")

    def _root_serial(self) -> str:
        """The serial the root index claims, for both formats: from the root JSON page's
        ``_last-serial``, read once per version of that page."""
        local = small_files.open(str(self.state.repo.root_json))
        if local is None:
            return ""
        try:
            key = (local.st.st_ino, local.st.st_mtime_ns)
            serial = self._root_serials.get(key)
            if serial is None:
                serial = _read_serial_of(local, True)
                self._root_serials = {key: serial}  # only the current version matters
            return serial
        finally:
            local.close()

    def _project(self, request: Request, name: str) -> Response | Any:
        if self.filters.denies(name):  # filters.deny_projects: never fetched, never served
            return text(404, "no such project")
        content_type = self._negotiate(request)
        if content_type is None:
            return _not_acceptable()
        paths = self._pages.get(name)
        if paths is None:
            repo = self.state.repo
            paths = (str(repo.project_html(name)), str(repo.project_json(name)))
            _remember(self._pages, name, paths)
        is_json = content_type == V1_JSON
        local = small_files.open(paths[1] if is_json else paths[0])
        # Both formats are written together: the page's own mtime tells its age, without
        # another stat. Only a page older than page_ttl asks who owns it.
        if local is None or (
            time.time() - local.st.st_mtime >= self.page_ttl
            and (name, local.st.st_mtime_ns) not in self._sync_owned
        ):
            exists, fetch = self.ondemand.needs_fetch(name)
            if local is not None and exists and not fetch:  # current by sync's schedule
                _remember(self._sync_owned, (name, local.st.st_mtime_ns), True)
            if fetch:
                if local is None or not exists:
                    if local is not None:
                        local.close()
                    return self._fetch_then_answer(request, name, content_type)
                self._refresh_in_background(name)
            elif local is None:
                return text(404, "no such project")
        request.outcome = "local"
        return self._answer_with(request, local, content_type, is_json, name)

    async def _fetch_then_answer(self, request: Request, name: str, content_type: str) -> Response:
        try:
            present = await self.ondemand.ensure(name)
        except UpstreamUnavailable as error:
            return text(error.status, "upstream unavailable")
        if not present:
            return text(404, "no such project")
        request.outcome = "fetched"
        return self._answer_page(request, name, content_type)

    def _refresh_in_background(self, name: str) -> None:
        """Serve the stale page now; the next request gets the refreshed one. ``ensure``
        shares one fetch per name, and keeps the stale page when the refresh fails."""
        refresh = asyncio.ensure_future(self.ondemand.ensure(name))
        self._refreshing.add(refresh)
        refresh.add_done_callback(self._refreshed)

    def _refreshed(self, refresh: asyncio.Future[bool]) -> None:
        self._refreshing.discard(refresh)
        if not refresh.cancelled() and refresh.exception() is not None:
            log.debug("background refresh failed: %s", refresh.exception())

    def _answer_page(self, request: Request, name: str, content_type: str) -> Response:
        is_json = content_type == V1_JSON
        repo = self.state.repo
        target = str(repo.project_json(name) if is_json else repo.project_html(name))
        local = small_files.open(target)
        if local is None:  # removed by a sync between the fetch and now
            return text(404, "no such project")
        return self._answer_with(request, local, content_type, is_json, name)

    def _answer_with(
        self, request: Request, local: LocalFile, content_type: str, is_json: bool, name: str
    ) -> Response:
        extra = self._extra.get((local.st.st_ino, local.st.st_mtime_ns))
        if extra is None:
            serial = _read_serial_of(local, is_json)
            extra = (
                [("Vary", "Accept"), *self.page_headers, ("X-PyPI-Last-Serial", serial)]
                if serial
                else [("Vary", "Accept"), *self.page_headers]
            )
            _remember(self._extra, (local.st.st_ino, local.st.st_mtime_ns), extra)
        if self.cooldown.applies_to(name):
            filtered = self.cooldown.filtered(local, is_json, name)
            if filtered is not None:  # policy.min_age held files back: no validators, ranges
                return Response(200, [("Content-Type", content_type), *extra], filtered)
        return answer_file(request, local, content_type, extra)
