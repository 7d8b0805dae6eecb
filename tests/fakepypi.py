"""A fake upstream PyPI for end-to-end tests: index, JSON API, XML-RPC and file host in one.

It runs an aiohttp server on 127.0.0.1 in a background thread with its own event loop, so it
serves async tests in the test's loop and the mirror under test running as a subprocess alike.

Shapes follow what real PyPI answers (see tests/data and the recorded corpus):
- ``{url}/pypi`` XML-RPC, ``{url}/pypi/<p>/json``, ``{url}/pypi/<p>/<v>/json``;
- ``{url}/simple/`` and ``{url}/simple/<p>/`` in HTML and PEP 691 JSON. As recorded from PyPI,
  the project pages carry no core-metadata attributes (the JSON API does), a non-normalised
  ``/simple/<Name>/`` answers 200 and ``/simple/<p>`` answers 308;
- files at ``{files_url}/packages/ab/cd/<60 hex>/<filename>`` (blake2b-256 of the content), their
  PEP 658 ``.metadata`` beside them, and the same under ``{url}/packages/packages/...`` for the
  relative URLs that PyPI's JSON API gives for some projects.

Every content change bumps the global serial and sets the project's serial to it, as on PyPI.
Fault switches (fail, delay, corrupt, truncate, stale) can be flipped while it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

from aiohttp import web
from defusedxml.xmlrpc import DefusedExpatParser
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from tests.wheelbuilder import build_sdist, build_wheel

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_JSON_TYPES = (SIMPLE_JSON, "application/vnd.pypi.simple.latest+json")
_HTML_TYPES = (
    "application/vnd.pypi.simple.v1+html",
    "application/vnd.pypi.simple.latest+html",
    "text/html",
    "text/*",
    "*/*",
)
_API_VERSION = "1.1"
_METADATA_SUFFIX = ".metadata"
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
# Every byte XOR 0xFF: same length, certainly different content.
_FLIP = bytes(i ^ 0xFF for i in range(256))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FakeFile:
    """One distribution file as the fake serves it. ``path`` is the part after ``/packages/``."""

    project: str
    version: str
    filename: str
    path: str
    url: str
    sha256: str
    size: int
    content: bytes = field(repr=False)
    metadata: bytes | None = field(repr=False)
    metadata_sha256: str | None
    md5: str
    blake2b_256: str
    packagetype: str
    python_version: str
    requires_python: str | None
    dependencies: tuple[str, ...]
    upload_time: datetime
    yanked: bool | str = False  # False, True, or the reason (a non-empty string)

    @property
    def is_yanked(self) -> bool:
        return self.yanked is not False

    @property
    def yanked_reason(self) -> str | None:
        return self.yanked if isinstance(self.yanked, str) else None

    @property
    def metadata_url(self) -> str:
        return self.url + _METADATA_SUFFIX


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    time: float


@dataclass(frozen=True)
class _Snapshot:
    """A project as one serial saw it; the JSON API renders from this."""

    name: str  # display name
    serial: int
    files: tuple[FakeFile, ...]


@dataclass
class _Project:
    current: _Snapshot
    previous: _Snapshot | None = None
    quarantined: bool = False
    relative_urls: bool = False
    # PEP 792 marker shown on the PEP 691 JSON page (None: the page has no project-status).
    status: str | None = None
    status_reason: str = ""
    # PEP 740: filename -> provenance URL shown on the PEP 691 JSON page.
    provenance: dict[str, str] = field(default_factory=dict)
    stale_left: int = 0


@dataclass
class _FailRule:
    pattern: str
    status: int
    remaining: int | None  # None: until clear_faults()


class _RangeNotSatisfiable(Exception):
    pass


def file_path(content: bytes, filename: str) -> str:
    """PyPI's storage path: blake2b-256 of the content in hex, split 2/2/60, then the filename."""
    digest = hashlib.blake2b(content, digest_size=32).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"


def _yanked_value(yanked: bool | str) -> bool | str:
    """Normalise the yanked argument: a reason implies yanked; an empty reason is plain True."""
    if isinstance(yanked, str):
        return yanked or True
    return bool(yanked)


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def _sorted_versions(versions: Iterable[str]) -> list[str]:
    unique = set(versions)
    valid = sorted((v for v in unique if _version_key(v)[0]), key=Version)
    invalid = sorted(v for v in unique if not _version_key(v)[0])
    return invalid + valid


def _is_prerelease(version: str) -> bool:
    try:
        return Version(version).is_prerelease
    except InvalidVersion:
        return False


def _python_version(filename: str) -> tuple[str, str]:
    """(packagetype, python_version) as PyPI reports them, guessed from the filename."""
    if filename.endswith(".whl"):
        parts = filename[: -len(".whl")].split("-")
        return "bdist_wheel", parts[-3] if len(parts) >= 5 else "py3"
    if filename.endswith(".egg"):
        return "bdist_egg", filename.rsplit("-", 2)[-1].removesuffix(".egg").removeprefix("py")
    return "sdist", "source"


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a single ``Range``; None means "send everything".

    Malformed and multi-range headers are ignored (RFC 9110 allows that); a range starting past
    the end raises _RangeNotSatisfiable.
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _RangeNotSatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return start, end


def _accept_quality(accept: str, media_types: tuple[str, ...]) -> float:
    best = 0.0
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media.lower() not in media_types:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best = max(best, quality)
    return best


def wants_simple_json(request: web.Request) -> bool:
    """PEP 691 negotiation: ``?format=`` wins over ``Accept``; no header means HTML."""
    accept = request.query.get("format") or request.headers.get("Accept", "")
    json_q = _accept_quality(accept, _JSON_TYPES)
    return json_q > 0 and json_q >= _accept_quality(accept, _HTML_TYPES)


def _parse_xmlrpc_call(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """Method name and params of an XML-RPC call, parsed with entity expansion forbidden."""
    unmarshaller = xmlrpc.client.Unmarshaller()
    parser = DefusedExpatParser(unmarshaller)
    parser.feed(body)
    parser.close()
    params = unmarshaller.close()
    method = unmarshaller.getmethodname()
    if not method:
        raise ValueError("not a method call")
    return method, params


class FakePyPI:
    """A fake PyPI (index, JSON API, XML-RPC and file host) on 127.0.0.1, in its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serial = 0
        self._projects: dict[str, _Project] = {}  # normalised name -> project
        self._by_path: dict[str, FakeFile] = {}  # file path -> file, for the file host
        self._fail_rules: list[_FailRule] = []
        self._delays: list[tuple[str, float]] = []
        self._corrupt: list[str] = []
        self._truncate: list[str] = []
        self._requests: list[RequestRecord] = []
        # False: an older index whose project pages are HTML only, whatever is asked for.
        self.simple_json_pages = True
        # Bound now so url and files_url are known before start(), e.g. to add content first.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._port: int = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """The mirror's ``upstream.pypi_url``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def files_url(self) -> str:
        """The mirror's ``upstream.packages_url``."""
        return f"{self.url}/files"

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> FakePyPI:
        if self._thread is not None:
            raise RuntimeError("FakePyPI can be started once")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-pypi", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            loop.close()
            raise RuntimeError("fake PyPI failed to start") from failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/pypi", self._xmlrpc)
        app.router.add_get("/pypi/{name}/json", self._project_json)
        app.router.add_get("/pypi/{name}/{version}/json", self._release_json)
        app.router.add_get("/simple/", self._simple_root)
        app.router.add_get("/simple/{name}/", self._simple_project)
        app.router.add_get("/simple/{name}", self._simple_slash)
        app.router.add_get("/files/packages/{path:.+}", self._file)
        app.router.add_get("/packages/packages/{path:.+}", self._file)
        # A short grace: stop() must not hang on a request that a delay() holds back.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            self._sock.close()
            return
        if runner is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(runner), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        self._sock.close()
        self._loop = None
        self._runner = None

    @staticmethod
    async def _shutdown(runner: web.AppRunner) -> None:
        await runner.cleanup()
        # Handlers still held back by delay() outlive the grace period: end them cleanly.
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def __enter__(self) -> FakePyPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- content

    @property
    def serial(self) -> int:
        with self._lock:
            return self._serial

    def project_serial(self, name: str) -> int:
        with self._lock:
            return self._projects[canonicalize_name(name)].current.serial

    def projects(self) -> dict[str, int]:
        """Display name -> serial, as list_packages_with_serial() answers."""
        with self._lock:
            return {p.current.name: p.current.serial for p in self._projects.values()}

    def files(self, project: str) -> list[FakeFile]:
        """The project's current files (with their current yanked state), in upload order."""
        with self._lock:
            return list(self._projects[canonicalize_name(project)].current.files)

    def file(self, project: str, filename: str) -> FakeFile:
        with self._lock:
            return self._find(canonicalize_name(project), filename)

    def add_wheel(
        self,
        project: str,
        version: str,
        *,
        dependencies: Iterable[str] = (),
        requires_python: str | None = None,
        yanked: bool | str = False,
        metadata: bool = True,
        extra_bytes: int = 0,
        upload_time: datetime | None = None,
    ) -> FakeFile:
        """Build and publish a real wheel; ``metadata`` says whether PEP 658 serves its METADATA."""
        deps = tuple(dependencies)
        filename, content, core_metadata = build_wheel(
            project,
            version,
            dependencies=deps,
            requires_python=requires_python,
            extra_bytes=extra_bytes,
        )
        return self.add_file(
            project,
            version,
            filename,
            content,
            metadata=core_metadata if metadata else None,
            dependencies=deps,
            requires_python=requires_python,
            yanked=yanked,
            upload_time=upload_time,
        )

    def add_sdist(
        self,
        project: str,
        version: str,
        *,
        dependencies: Iterable[str] = (),
        requires_python: str | None = None,
        yanked: bool | str = False,
        upload_time: datetime | None = None,
    ) -> FakeFile:
        deps = tuple(dependencies)
        filename, content = build_sdist(
            project, version, dependencies=deps, requires_python=requires_python
        )
        return self.add_file(
            project,
            version,
            filename,
            content,
            dependencies=deps,
            requires_python=requires_python,
            yanked=yanked,
            upload_time=upload_time,
        )

    def add_file(
        self,
        project: str,
        version: str,
        filename: str,
        content: bytes,
        *,
        metadata: bytes | None = None,
        dependencies: Iterable[str] = (),
        requires_python: str | None = None,
        yanked: bool | str = False,
        upload_time: datetime | None = None,
    ) -> FakeFile:
        """Publish arbitrary bytes; ``metadata`` (bytes) is served as its PEP 658 file."""
        if "/" in filename or filename in ("", ".", ".."):
            raise ValueError(f"bad filename: {filename!r}")
        path = file_path(content, filename)
        packagetype, python_version = _python_version(filename)
        key = canonicalize_name(project)
        with self._lock:
            existing = self._projects.get(key)
            if existing is not None and any(f.filename == filename for f in existing.current.files):
                raise ValueError(f"{filename} already exists in {project}")
            if path in self._by_path:
                raise ValueError(f"{path} already exists")
            self._serial += 1
            new = FakeFile(
                project=existing.current.name if existing else project,
                version=version,
                filename=filename,
                path=path,
                url=f"{self.files_url}/packages/{path}",
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
                content=content,
                metadata=metadata,
                metadata_sha256=hashlib.sha256(metadata).hexdigest() if metadata else None,
                md5=hashlib.md5(content).hexdigest(),
                blake2b_256=path.rsplit("/", 1)[0].replace("/", ""),
                packagetype=packagetype,
                python_version=python_version,
                requires_python=requires_python,
                dependencies=tuple(dependencies),
                upload_time=upload_time or datetime.now(UTC),
                yanked=_yanked_value(yanked),
            )
            self._by_path[path] = new
            if existing is None:
                self._projects[key] = _Project(_Snapshot(project, self._serial, (new,)))
            else:
                self._commit(existing, (*existing.current.files, new))
            return new

    def remove_project(self, project: str) -> None:
        with self._lock:
            removed = self._projects.pop(canonicalize_name(project))
            for f in removed.current.files:
                self._by_path.pop(f.path, None)
            self._serial += 1

    def remove_file(self, project: str, filename: str) -> None:
        with self._lock:
            proj = self._projects[canonicalize_name(project)]
            target = self._find(canonicalize_name(project), filename)
            self._by_path.pop(target.path, None)
            self._serial += 1
            self._commit(proj, tuple(f for f in proj.current.files if f is not target))

    def yank(self, project: str, filename: str, reason: str = "") -> None:
        self._set_yanked(project, filename, reason or True)

    def unyank(self, project: str, filename: str) -> None:
        self._set_yanked(project, filename, False)

    def quarantine(self, project: str, quarantined: bool = True) -> None:
        """PEP 792: still listed (XML-RPC, root index) but its pages and JSON answer 404."""
        with self._lock:
            proj = self._projects[canonicalize_name(project)]
            proj.quarantined = quarantined
            self._serial += 1
            self._commit(proj, proj.current.files)

    def set_status(self, project: str, status: str | None, reason: str = "") -> None:
        """PEP 792 marker on the PEP 691 JSON page (None: no marker). Unlike ``quarantine``,
        the JSON API keeps answering; the page of a "quarantined" project lists no files."""
        with self._lock:
            proj = self._projects[canonicalize_name(project)]
            proj.status, proj.status_reason = status, reason
            self._serial += 1
            self._commit(proj, proj.current.files)

    def set_provenance(self, project: str, filename: str, url: str) -> None:
        """PEP 740: the PEP 691 JSON page gives ``url`` as the file's provenance."""
        with self._lock:
            proj = self._projects[canonicalize_name(project)]
            self._find(canonicalize_name(project), filename)
            proj.provenance[filename] = url
            self._serial += 1
            self._commit(proj, proj.current.files)

    def set_relative_urls(self, project: str, relative: bool = True) -> None:
        """Make the JSON API give ``../../packages/packages/...`` file URLs, as PyPI does."""
        with self._lock:
            self._projects[canonicalize_name(project)].relative_urls = relative

    def _set_yanked(self, project: str, filename: str, yanked: bool | str) -> None:
        with self._lock:
            proj = self._projects[canonicalize_name(project)]
            target = self._find(canonicalize_name(project), filename)
            updated = replace(target, yanked=_yanked_value(yanked))
            self._by_path[updated.path] = updated
            self._serial += 1
            self._commit(proj, tuple(updated if f is target else f for f in proj.current.files))

    def _find(self, key: str, filename: str) -> FakeFile:
        for f in self._projects[key].current.files:
            if f.filename == filename:
                return f
        raise KeyError(f"{filename} not in {key}")

    def _commit(self, proj: _Project, files: tuple[FakeFile, ...]) -> None:
        """Make a new snapshot at the current serial; the old one is what stale() serves."""
        proj.previous = proj.current
        proj.current = _Snapshot(proj.current.name, self._serial, files)

    # ----------------------------------------------------------------- faults

    def fail(self, pattern: str, status: int = 503, times: int | None = 1) -> None:
        """The next ``times`` requests whose path contains ``pattern`` get ``status``."""
        with self._lock:
            self._fail_rules.append(_FailRule(pattern, status, times))

    def delay(self, pattern: str, seconds: float) -> None:
        with self._lock:
            self._delays.append((pattern, seconds))

    def corrupt(self, pattern: str) -> None:
        """Matching file responses keep their length but carry different bytes."""
        with self._lock:
            self._corrupt.append(pattern)

    def truncate(self, pattern: str) -> None:
        """Matching file responses announce the full length, then drop after half the body."""
        with self._lock:
            self._truncate.append(pattern)

    def stale(self, project: str, times: int = 1) -> None:
        """The next ``times`` JSON API answers for ``project`` come from its previous snapshot.

        A project with no previous snapshot (one change only) answers 404, as a CDN that
        cached the time before it existed would.
        """
        with self._lock:
            self._projects[canonicalize_name(project)].stale_left = times

    def clear_faults(self) -> None:
        with self._lock:
            self._fail_rules.clear()
            self._delays.clear()
            self._corrupt.clear()
            self._truncate.clear()
            for proj in self._projects.values():
                proj.stale_left = 0

    # ----------------------------------------------------------------- request log

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def requests_matching(self, substring: str, method: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [
                r
                for r in self._requests
                if substring in r.path and (method is None or r.method == method.upper())
            ]

    # ----------------------------------------------------------------- HTTP: plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        with self._lock:
            self._requests.append(
                RequestRecord(
                    request.method, path, request.query_string, dict(request.headers), time.time()
                )
            )
            wait = sum(seconds for pattern, seconds in self._delays if pattern in path)
            status = self._take_failure(path)
        if wait:
            await asyncio.sleep(wait)
        if status is not None:
            return web.Response(status=status, text=f"fake upstream failure {status}\n")
        return await handler(request)

    def _take_failure(self, path: str) -> int | None:
        for rule in self._fail_rules:
            if rule.pattern in path and (rule.remaining is None or rule.remaining > 0):
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.status
        return None

    @staticmethod
    def _json(doc: Any, serial: int, content_type: str = "application/json") -> web.Response:
        return web.Response(
            body=json.dumps(doc).encode(),
            headers={"Content-Type": content_type, "X-PyPI-Last-Serial": str(serial)},
        )

    # ----------------------------------------------------------------- HTTP: XML-RPC

    async def _xmlrpc(self, request: web.Request) -> web.Response:
        try:
            method, params = _parse_xmlrpc_call(await request.read())
        except Exception:
            return self._xmlrpc_answer(xmlrpc.client.Fault(-32700, "parse error"))
        methods: dict[str, Callable[..., Any]] = {
            "list_packages_with_serial": self.projects,
            "changelog_last_serial": lambda: self.serial,
        }
        function = methods.get(method)
        if function is None:
            return self._xmlrpc_answer(xmlrpc.client.Fault(-32601, f"no such method: {method}"))
        try:
            result = function(*params)
        except TypeError as exc:
            return self._xmlrpc_answer(xmlrpc.client.Fault(-32602, f"invalid params: {exc}"))
        return self._xmlrpc_answer((result,))

    @staticmethod
    def _xmlrpc_answer(result: tuple[Any, ...] | xmlrpc.client.Fault) -> web.Response:
        payload = xmlrpc.client.dumps(result, methodresponse=True)
        return web.Response(body=payload.encode(), content_type="text/xml", charset="utf-8")

    # ----------------------------------------------------------------- HTTP: JSON API

    def _json_snapshot(self, name: str, canonical_location: str) -> tuple[_Snapshot | None, bool]:
        """The snapshot the JSON API shows (stale-aware) and whether URLs are relative.

        Unknown and quarantined projects are 404; a non-normalised name is a 301 to
        ``canonical_location`` (as on PyPI), without using up a stale answer.
        """
        with self._lock:
            proj = self._projects.get(canonicalize_name(name))
            if proj is None or proj.quarantined:
                raise web.HTTPNotFound()
            if name != canonicalize_name(name):
                raise web.HTTPMovedPermanently(canonical_location)
            if proj.stale_left > 0:
                proj.stale_left -= 1
                return proj.previous, proj.relative_urls
            return proj.current, proj.relative_urls

    async def _project_json(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        location = f"/pypi/{quote(canonicalize_name(name))}/json"
        snapshot, relative = self._json_snapshot(name, location)
        if snapshot is None or not snapshot.files:
            raise web.HTTPNotFound()
        prefix = "../../packages/packages/" if relative else None
        return self._json(self._project_document(snapshot, prefix), snapshot.serial)

    async def _release_json(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        version = request.match_info["version"]
        location = f"/pypi/{quote(canonicalize_name(name))}/{quote(version)}/json"
        snapshot, relative = self._json_snapshot(name, location)
        match = None if snapshot is None else self._match_version(snapshot, version)
        if snapshot is None or match is None:
            raise web.HTTPNotFound()
        # One level deeper than /pypi/<p>/json, so one more ".." reaches the site root.
        prefix = "../../../packages/packages/" if relative else None
        return self._json(self._project_document(snapshot, prefix, match), snapshot.serial)

    @staticmethod
    def _match_version(snapshot: _Snapshot, version: str) -> str | None:
        versions = {f.version for f in snapshot.files}
        if version in versions:
            return version
        wanted = _version_key(version)
        return next((v for v in versions if wanted[0] and _version_key(v) == wanted), None)

    def _project_document(
        self, snapshot: _Snapshot, relative_prefix: str | None, version: str | None = None
    ) -> dict[str, Any]:
        releases: dict[str, list[FakeFile]] = {
            v: [] for v in _sorted_versions(f.version for f in snapshot.files)
        }
        for f in snapshot.files:
            releases[f.version].append(f)
        shown = version or self._latest(releases)

        def entry(f: FakeFile) -> dict[str, Any]:
            url = f"{relative_prefix}{f.path}" if relative_prefix else f.url
            return self._file_entry(f, url)

        doc: dict[str, Any] = {"info": self._info(snapshot, shown, releases[shown])}
        if version is None:
            doc["releases"] = {v: [entry(f) for f in files] for v, files in releases.items()}
        doc["urls"] = [entry(f) for f in releases[shown]]
        doc["vulnerabilities"] = []
        doc["last_serial"] = snapshot.serial
        if version is None:
            doc["ownership"] = {"organization": None, "roles": []}
        return doc

    @staticmethod
    def _latest(releases: dict[str, list[FakeFile]]) -> str:
        """PyPI's "latest": the highest final release not fully yanked, else the highest."""
        live = [v for v, files in releases.items() if not all(f.is_yanked for f in files)]
        final = [v for v in live if not _is_prerelease(v)]
        pool = final or live or list(releases)
        return max(pool, key=_version_key)

    def _info(self, snapshot: _Snapshot, version: str, files: list[FakeFile]) -> dict[str, Any]:
        first = files[0]
        dependencies = next((f.dependencies for f in files if f.dependencies), ())
        all_yanked = all(f.is_yanked for f in files)
        return {
            "author": None,
            "author_email": None,
            "classifiers": [],
            "description": "",
            "description_content_type": None,
            "docs_url": None,
            "download_url": None,
            "dynamic": None,
            "home_page": None,
            "keywords": None,
            "license": None,
            "license_expression": None,
            "license_files": None,
            "maintainer": None,
            "maintainer_email": None,
            "name": snapshot.name,
            "package_url": f"{self.url}/project/{snapshot.name}/",
            "platform": None,
            "project_url": f"{self.url}/project/{snapshot.name}/",
            "project_urls": None,
            "provides_extra": None,
            "release_url": f"{self.url}/project/{snapshot.name}/{version}/",
            "requires_dist": list(dependencies) or None,
            "requires_python": first.requires_python,
            "summary": f"Test distribution {snapshot.name}",
            "version": version,
            "yanked": all_yanked,
            "yanked_reason": first.yanked_reason if all_yanked else None,
            "downloads": {"last_day": -1, "last_month": -1, "last_week": -1},
            "bugtrack_url": None,
        }

    @staticmethod
    def _file_entry(f: FakeFile, url: str) -> dict[str, Any]:
        return {
            "comment_text": "",
            "digests": {"blake2b_256": f.blake2b_256, "md5": f.md5, "sha256": f.sha256},
            "filename": f.filename,
            "md5_digest": f.md5,
            "packagetype": f.packagetype,
            "python_version": f.python_version,
            "requires_python": f.requires_python,
            "size": f.size,
            "upload_time": f.upload_time.strftime("%Y-%m-%dT%H:%M:%S"),
            "upload_time_iso_8601": f.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "url": url,
            "yanked": f.is_yanked,
            "yanked_reason": f.yanked_reason,
            "has_sig": False,
            "downloads": -1,
            "core-metadata": {"sha256": f.metadata_sha256} if f.metadata_sha256 else False,
        }

    # ----------------------------------------------------------------- HTTP: simple index

    async def _simple_root(self, request: web.Request) -> web.Response:
        with self._lock:
            serial = self._serial
            listed = sorted(
                ((p.current.name, p.current.serial) for p in self._projects.values()),
                key=lambda item: item[0],
            )
        if wants_simple_json(request):
            doc = {
                "meta": {"_last-serial": serial, "api-version": _API_VERSION},
                "projects": [{"_last-serial": s, "name": name} for name, s in listed],
            }
            return self._json(doc, serial, SIMPLE_JSON)
        anchors = "".join(
            f'<a href="{quote(canonicalize_name(name))}/">{html.escape(name)}</a>\n'
            for name, _ in listed
        )
        page = f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n"
        return web.Response(
            body=page.encode(),
            headers={"Content-Type": "text/html", "X-PyPI-Last-Serial": str(serial)},
        )

    async def _simple_slash(self, request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"/simple/{quote(request.match_info['name'])}/")

    async def _simple_project(self, request: web.Request) -> web.Response:
        # As recorded from PyPI: a non-normalised name gets the same page, not a redirect.
        with self._lock:
            proj = self._projects.get(canonicalize_name(request.match_info["name"]))
            if proj is None or proj.quarantined:
                raise web.HTTPNotFound()
            snapshot = proj.current
            status, reason = proj.status, proj.status_reason
            provenance = dict(proj.provenance)
        normalized = canonicalize_name(snapshot.name)
        files = sorted(snapshot.files, key=lambda f: f.filename)
        if status == "quarantined":
            files = []  # PEP 792: no file of a quarantined project is offered
        if wants_simple_json(request) and self.simple_json_pages:
            entries: list[dict[str, Any]] = []
            for f in files:
                entry: dict[str, Any] = {
                    "filename": f.filename,
                    "hashes": {"sha256": f.sha256},
                    "requires-python": f.requires_python,
                    "size": f.size,
                    "upload-time": f.upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "url": f.url,
                    "yanked": f.yanked,
                }
                if status is not None or provenance:
                    entry["provenance"] = provenance.get(f.filename)
                entries.append(entry)
            api = "1.4" if status is not None or provenance else _API_VERSION
            doc: dict[str, Any] = {
                "files": entries,
                "meta": {"_last-serial": str(snapshot.serial), "api-version": api},
                "name": normalized,
                "versions": _sorted_versions(f.version for f in snapshot.files),
            }
            if status is not None:
                doc["project-status"] = {"status": status, **({"reason": reason} if reason else {})}
            return self._json(doc, snapshot.serial, SIMPLE_JSON)
        title = html.escape(snapshot.name)
        lines = [
            "<!DOCTYPE html>",
            "<html>",
            f"<head><title>Links for {title}</title></head>",
            "<body>",
            f"<h1>Links for {title}</h1>",
        ]
        for f in files:
            attributes = ""
            if f.requires_python is not None:
                attributes += f' data-requires-python="{html.escape(f.requires_python)}"'
            if f.is_yanked:
                attributes += f' data-yanked="{html.escape(f.yanked_reason or "")}"'
            lines.append(
                f'<a href="{html.escape(f.url)}#sha256={f.sha256}"{attributes}>'
                f"{html.escape(f.filename)}</a><br/>"
            )
        lines += ["</body>", "</html>", ""]
        return web.Response(
            body="\n".join(lines).encode(),
            headers={"Content-Type": "text/html", "X-PyPI-Last-Serial": str(snapshot.serial)},
        )

    # ----------------------------------------------------------------- HTTP: file host

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        with self._lock:
            body = self._file_body(path)
            corrupt = any(pattern in request.path for pattern in self._corrupt)
            truncate = any(pattern in request.path for pattern in self._truncate)
        if body is None:
            raise web.HTTPNotFound()
        size = len(body)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": "application/x-gzip"
            if path.endswith(".tar.gz")
            else "application/octet-stream",
        }
        status = 200
        try:
            byte_range = _byte_range(request.headers.get("Range", ""), size)
        except _RangeNotSatisfiable:
            return web.Response(
                status=416, headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}
            )
        if byte_range is not None:
            first, last = byte_range
            body = body[first : last + 1]
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        if corrupt:
            body = body.translate(_FLIP)
        if truncate:
            return await self._truncated(request, status, headers, body)
        return web.Response(status=status, headers=headers, body=body)

    def _file_body(self, path: str) -> bytes | None:
        found = self._by_path.get(path)
        if found is not None:
            return found.content
        if path.endswith(_METADATA_SUFFIX):
            dist = self._by_path.get(path.removesuffix(_METADATA_SUFFIX))
            if dist is not None:
                return dist.metadata
        return None

    @staticmethod
    async def _truncated(
        request: web.Request, status: int, headers: dict[str, str], body: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        response.force_close()
        await response.prepare(request)
        if request.method != "HEAD":
            await response.write(body[: len(body) // 2])
            # Dropping the connection mid-body is the fault; aiohttp copes with the closed
            # transport when it tries to finish the response.
            if request.transport is not None:
                request.transport.close()
        return response
