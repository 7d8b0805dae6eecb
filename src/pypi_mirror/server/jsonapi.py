"""PyPI's JSON API (``/pypi/{name}/json``, ``/pypi/{name}/{version}/json``) with every file URL
pointing back at this mirror's ``/packages/…`` (absolute: clients such as poetry and
bandersnatch resolve them against nothing), so downloads come through the mirror.

The held project document is rewritten once per (document version, base URL) and kept
(bounded); a release the held document does not describe exactly is fetched from upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson

from pypi_mirror.filters import filters_of
from pypi_mirror.names import file_path_from_url, is_valid_project_name, is_valid_version, normalize
from pypi_mirror.server.baseurl import BaseUrl
from pypi_mirror.server.cooldown import cooldown_of, drop_new_files
from pypi_mirror.server.http import (
    CORS,
    Request,
    Response,
    method_not_allowed,
    preflight,
    redirect,
    text,
)
from pypi_mirror.server.localfile import not_modified, small_files
from pypi_mirror.server.ondemand import OnDemandIndex, UpstreamUnavailable
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

REWRITTEN_BUDGET = 64 * 1024 * 1024  # bytes of rewritten documents kept per worker
MAX_UPSTREAM_DOC = 64 * 1024 * 1024  # a larger per-release document from upstream is refused
FETCHED_TTL = 600.0  # seconds a release document fetched from upstream is reused
FETCHED_LIMIT = 1000  # release documents kept


class JsonDocError(ValueError):
    """The document is not a PyPI JSON API document."""


def _rewrite_files(files: Any, packages: str) -> None:
    if not isinstance(files, list):
        return
    for entry in files:
        if isinstance(entry, dict):
            url = entry.get("url")
            if isinstance(url, str):
                path = file_path_from_url(url)
                if path is not None:
                    entry["url"] = packages + path


def rewrite(doc: Any, packages: str) -> Any:
    """``doc`` with the URL of every file it lists (``urls`` and ``releases``) on
    ``packages`` (``{base}/packages/``: at the host's root, as on PyPI's file host); URLs
    not PyPI-shaped are left alone."""
    if not isinstance(doc, dict):
        raise JsonDocError("not a JSON object")
    _rewrite_files(doc.get("urls"), packages)
    releases = doc.get("releases")
    if isinstance(releases, dict):
        for files in releases.values():
            _rewrite_files(files, packages)
    return doc


def release_document(doc: dict[str, Any], version: str) -> dict[str, Any] | None:
    """PyPI's ``/pypi/{name}/{version}/json`` built from the held project document, when the
    held ``info`` is that release's own (the latest); None otherwise (``info`` would be wrong)."""
    info = doc.get("info")
    releases = doc.get("releases")
    if not isinstance(info, dict) or not isinstance(releases, dict):
        return None
    if info.get("version") != version or version not in releases:
        return None
    return {
        "info": info,
        "last_serial": doc.get("last_serial"),
        "urls": releases[version],
        "vulnerabilities": doc.get("vulnerabilities", []),
    }


def _render(
    body: bytes, packages: str, version: str | None, cutoff: float | None = None
) -> tuple[bytes, str, str] | None:
    """(rewritten document, its serial, its ETag) from a project (or release) document's bytes; None
    when the project document does not hold ``version`` exactly. Runs in a thread."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise JsonDocError(str(error)) from None
    if not isinstance(doc, dict):
        raise JsonDocError("not a JSON object")
    if cutoff is not None:  # policy.min_age
        drop_new_files(doc, cutoff)
    if version is not None:
        doc = release_document(doc, version)
        if doc is None:
            return None
    rewrite(doc, packages)
    serial = doc.get("last_serial")
    data = orjson.dumps(doc)
    etag = f'"{hashlib.blake2b(data, digest_size=12).hexdigest()}"'
    return data, str(serial) if isinstance(serial, int) else "", etag


class JsonApi:
    def __init__(self, state: ServerState, ondemand: OnDemandIndex) -> None:
        self.state = state
        self.ondemand = ondemand
        self.filters = filters_of(state.config.filters)
        self.cooldown = cooldown_of(state)
        self.prefix = state.config.prefix
        self.base_url = BaseUrl(state.config)
        # Rewriting a large document costs milliseconds: off the event loop.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jsonapi")
        # (inode, mtime_ns, size, packages base, version) → (body, serial, etag); bounded.
        self._rewritten: OrderedDict[tuple[Any, ...], tuple[bytes, str, str]] = OrderedDict()
        self._used = 0
        self._refreshing: set[asyncio.Future[bool]] = set()
        # (name, version, packages base) → (when, entry): older releases fetched from upstream
        self._fetched: dict[tuple[str, str, str], tuple[float, tuple[bytes, str, str]]] = {}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _refresh_if_stale(self, name: str) -> None:
        """An on-demand project older than page_ttl: answered as held now, refreshed in the
        background (as its simple page would be), so the JSON API is never stale for long."""
        exists, fetch = self.ondemand.needs_fetch(name)
        if exists and fetch:
            refresh = asyncio.ensure_future(self.ondemand.ensure(name))
            self._refreshing.add(refresh)
            refresh.add_done_callback(self._refreshed)

    def _refreshed(self, refresh: asyncio.Future[bool]) -> None:
        self._refreshing.discard(refresh)
        if not refresh.cancelled() and refresh.exception() is not None:
            log.debug("background refresh failed: %s", refresh.exception())

    def answer(
        self, request: Request, name: str, version: str | None, layout: str
    ) -> Response | Any:
        """``layout`` is the path before the name (``/pypi`` or ``""``), kept in redirects."""
        request.route = "json"
        if request.method not in ("GET", "HEAD"):
            return preflight() if request.method == "OPTIONS" else method_not_allowed()
        if not is_valid_project_name(name):
            return text(404, "no such project")
        canonical = normalize(name)
        if canonical != name:
            tail = f"{version}/json" if version is not None else "json"
            location = f"{self.prefix}{layout}/{canonical}/{tail}"
            return redirect(301, f"{location}?{request.query}" if request.query else location)
        if self.filters.denies(canonical):  # filters.deny_projects: never fetched or served
            return text(404, "no such project")
        if version is not None and not is_valid_version(version):
            return text(404, "no such release")
        base = self.base_url(request)
        if base is None:
            return text(400, "bad Host header")
        return self._answer(request, canonical, version, f"{base}/packages/")

    async def _answer(
        self, request: Request, name: str, version: str | None, packages: str
    ) -> Response:
        if version is not None:  # an older release fetched lately: no parse of the held one
            fetched = self._fetched.get((name, version, packages))
            if fetched is not None and time.monotonic() - fetched[0] < FETCHED_TTL:
                request.outcome = "local"
                return self._respond(request, fetched[1])
        target = str(self.state.repo.pypi_json(name))
        local = small_files.open(target)
        if local is None:
            try:
                present = await self.ondemand.ensure(name)
            except UpstreamUnavailable as error:
                return text(error.status, "upstream unavailable")
            if not present:
                return text(404, "no such project")
            local = small_files.open(target)
            if local is None:
                return text(404, "no such project")
            request.outcome = "fetched"
        else:
            request.outcome = "local"
            self._refresh_if_stale(name)
        st = local.st
        cutoff = self.cooldown.cutoff(name)
        key = (st.st_ino, st.st_mtime_ns, st.st_size, packages, version, cutoff)
        known = self._rewritten.get(key)
        if known is None:
            try:
                body = local.body if local.body is not None else _read_all(local.fd, st.st_size)
            finally:
                local.close()
            loop = asyncio.get_running_loop()
            try:
                rendered = await loop.run_in_executor(
                    self.executor, _render, body, packages, version, cutoff
                )
            except JsonDocError as error:
                log.warning("held JSON of %s is unusable: %s", name, error)
                return text(502, "the held JSON document is unusable")
            if rendered is None:  # a release other than the latest: only upstream knows it
                assert version is not None
                return await self._from_upstream(request, name, version, packages)
            known = self._remember(key, rendered)
        else:
            local.close()
            self._rewritten.move_to_end(key)
        return self._respond(request, known)

    def _remember(
        self, key: tuple[Any, ...], entry: tuple[bytes, str, str]
    ) -> tuple[bytes, str, str]:
        body = entry[0]
        while self._rewritten and self._used + len(body) > REWRITTEN_BUDGET:
            _key, old = self._rewritten.popitem(last=False)
            self._used -= len(old[0])
        if len(body) <= REWRITTEN_BUDGET:
            self._rewritten[key] = entry
            self._used += len(body)
        return entry

    @staticmethod
    def _respond(request: Request, entry: tuple[bytes, str, str]) -> Response:
        body, serial, etag = entry
        headers = [("Content-Type", "application/json"), ("ETag", etag), CORS]
        if serial:
            headers.append(("X-PyPI-Last-Serial", serial))
        if b"if-none-match" in request.headers and not_modified(request, etag, 0.0):
            return Response(304, headers[1:])
        return Response(200, headers, body)

    async def _from_upstream(
        self, request: Request, name: str, version: str, packages: str
    ) -> Response:
        key = (name, version, packages)  # FETCHED_TTL is well under cutoff's hour
        known = self._fetched.get(key)
        if known is not None and time.monotonic() - known[0] < FETCHED_TTL:
            return self._respond(request, known[1])
        state = self.state
        url = state.urls.release_json(name, version)
        request.proxied = True
        request.outcome = "proxy"
        try:
            async with state.session().get(url, allow_redirects=False) as upstream:
                if upstream.status == 404:
                    return text(404, "no such release")
                if upstream.status != 200:
                    log.warning("upstream %s answered %d", url, upstream.status)
                    return text(502, "upstream unavailable")
                pieces, size = [], 0
                async for chunk in upstream.content.iter_any():
                    pieces.append(chunk)
                    size += len(chunk)
                    if size > MAX_UPSTREAM_DOC:
                        return text(502, "upstream document too large")
                body = b"".join(pieces)
        except TimeoutError:
            return text(504, "upstream timed out")
        except aiohttp.ClientError as error:
            log.warning("upstream request %s failed: %s", url, error)
            return text(502, "upstream unreachable")
        loop = asyncio.get_running_loop()
        try:
            rendered = await loop.run_in_executor(
                self.executor, _render, body, packages, None, self.cooldown.cutoff(name)
            )
        except JsonDocError:
            return text(502, "upstream document unusable")
        assert rendered is not None
        if len(self._fetched) >= FETCHED_LIMIT:
            self._fetched.clear()
        self._fetched[key] = (time.monotonic(), rendered)
        return self._respond(request, rendered)


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
