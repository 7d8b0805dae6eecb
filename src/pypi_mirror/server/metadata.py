"""PEP 658 ``<file>.metadata`` files the mirror does not hold: from the upstream, else the wheel.

PyPI's JSON API advertises core metadata for files whose ``.metadata`` its file host answers
404 (seen live, e.g. iniconfig-2.3.1-py3-none-any.whl.metadata), and pip fails hard on that
404. A redirect would send pip straight to it, so a metadata request is never redirected: the
mirror asks the file host itself, and when the host has no copy it reads the wheel's
``*.dist-info/METADATA`` with HTTP Range requests (the zip's tail, its central directory, one
member: never the whole wheel), checks it against the sha256 the mirror's own pages advertise,
and keeps it in the hottest tier so the next request is a local hit. Bytes whose hash differs
from the advertised one are never served: pip would reject them anyway, with a worse message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import struct
import time
import weakref
import zipfile
import zlib
from dataclasses import dataclass, field

import aiohttp
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from pypi_mirror.index.store import load_index_files
from pypi_mirror.names import METADATA_SUFFIX, filename_of, is_valid_file_path, normalize
from pypi_mirror.repo import Repo, atomic_write
from pypi_mirror.server.http import Request, Response, text
from pypi_mirror.server.localfile import LocalFile, answer_file, open_regular_fd
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_METADATA = 8 * 1024 * 1024  # far above any real METADATA; caps memory per request
TAIL = 64 * 1024  # first read: end of central directory, and for most wheels all of it
MIN_FETCH = 64 * 1024  # later reads ask for at least this much: fewer round trips
MAX_FETCH = 64 * 1024 * 1024  # a central directory larger than this is not worth reading
MAX_ROUNDS = 6  # tail, central directory, member, and a little slack for odd layouts
LOCAL_HEADER_SLACK = 1024  # a member's local extra field may be longer than the central one
NEGATIVE_TTL = 60.0  # how long a 404 answer is remembered
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_LOCAL_HEADER_SIZE = 30


class MetadataUnavailable(Exception):
    """No verified metadata can be had; ``status`` is the answer to give (404, 502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    status: int  # 200, or the error status to answer with
    body: bytes = b""
    stored: bool = False  # the body now lives in the hottest tier
    fetched: bool = False  # the body came from the upstream just now
    reason: str = ""


# -- reading a remote zip from the ranges fetched so far -----------------------------------


class _Missing(Exception):  # not an OSError: zipfile turns those into BadZipFile
    def __init__(self, start: int, end: int) -> None:
        super().__init__(start, end)
        self.start = start
        self.end = end


class RangeFile:
    """A read-only, seekable file of ``size`` bytes of which only some parts are known.

    A read that touches unknown bytes raises ``_Missing(start, end)``: the caller fetches that
    range, ``add``s it, and runs the whole (cheap, pure) parse again.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pos = 0
        self._parts: list[tuple[int, bytes]] = []  # sorted, disjoint, never adjacent

    def add(self, start: int, data: bytes) -> None:
        end = start + len(data)
        keep: list[tuple[int, bytes]] = []
        joined: list[tuple[int, bytes]] = [(start, data)]
        for part_start, part in self._parts:
            if part_start + len(part) < start or part_start > end:
                keep.append((part_start, part))
            else:
                joined.append((part_start, part))
        first = min(s for s, _ in joined)
        last = max(s + len(d) for s, d in joined)
        buffer = bytearray(last - first)
        for part_start, part in joined:
            buffer[part_start - first : part_start - first + len(part)] = part
        # The new bytes last: they win where an old part overlapped.
        buffer[start - first : end - first] = data
        keep.append((first, bytes(buffer)))
        self._parts = sorted(keep)

    def covers(self, start: int, end: int) -> bool:
        end = min(end, self.size)
        return start >= end or any(s <= start and end <= s + len(part) for s, part in self._parts)

    def fetched(self) -> int:
        return sum(len(part) for _, part in self._parts)

    # -- the file interface zipfile uses --

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self._pos = base + offset
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        start = self._pos
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        if start >= end:
            return b""
        for part_start, part in self._parts:
            if part_start <= start and end <= part_start + len(part):
                self._pos = end
                return part[start - part_start : end - part_start]
        raise _Missing(start, end)

    def close(self) -> None:
        pass


def _metadata_member(archive: zipfile.ZipFile, filename: str) -> zipfile.ZipInfo:
    """``<name>-<version>.dist-info/METADATA``, chosen as pip does: the only .dist-info folder,
    and its name must be the wheel's project."""
    project = parse_wheel_filename(filename)[0]
    tops = {name.split("/", 1)[0] for name in archive.namelist() if "/" in name}
    folders = {top for top in tops if top.endswith(".dist-info")}
    if len(folders) != 1:
        raise MetadataUnavailable(404, f"{filename} has {len(folders)} .dist-info folders")
    folder = folders.pop()
    if canonicalize_name(folder.removesuffix(".dist-info").rpartition("-")[0]) != project:
        raise MetadataUnavailable(404, f"{filename}: {folder} is not for {project}")
    try:
        return archive.getinfo(f"{folder}/METADATA")
    except KeyError:
        raise MetadataUnavailable(404, f"{filename} has no {folder}/METADATA") from None


def read_metadata(remote: RangeFile, filename: str) -> bytes:
    """The wheel's METADATA from what ``remote`` holds; raises _Missing for what it lacks."""
    try:
        with zipfile.ZipFile(remote) as archive:  # type: ignore[arg-type]
            info = _metadata_member(archive, filename)
            if info.file_size > MAX_METADATA or info.compress_size > MAX_METADATA:
                raise MetadataUnavailable(404, f"{filename}: METADATA is implausibly large")
            # Ask for the whole member in one range instead of chunk by chunk.
            span_end = (
                info.header_offset
                + _LOCAL_HEADER_SIZE
                + len(info.orig_filename.encode("utf-8"))
                + len(info.extra)
                + info.compress_size
                + LOCAL_HEADER_SLACK
            )
            if not remote.covers(info.header_offset, span_end):
                raise _Missing(info.header_offset, min(span_end, remote.size))
            with archive.open(info) as member:
                data = member.read(MAX_METADATA + 1)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # an unsupported compression method
        RuntimeError,  # an encrypted member
        EOFError,
        ValueError,
        struct.error,
        zlib.error,
        InvalidWheelFilename,
    ) as error:
        raise MetadataUnavailable(404, f"{filename} is not a readable wheel: {error}") from None
    if len(data) > MAX_METADATA:
        raise MetadataUnavailable(404, f"{filename}: METADATA is implausibly large")
    return data


# -- fetching ranges -----------------------------------------------------------------------


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise MetadataUnavailable(502, f"upstream sent more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_range(
    session: aiohttp.ClientSession, url: str, spec: str, expect_start: int | None
) -> tuple[int, bytes, int]:
    """(first byte, bytes, total size) for one ``Range: bytes=<spec>`` request."""
    headers = {"Range": f"bytes={spec}", "Accept-Encoding": "identity"}
    try:
        async with session.get(url, headers=headers, auto_decompress=False) as response:
            if response.status in (404, 410):
                raise MetadataUnavailable(404, f"upstream has no {filename_of(url)}")
            if response.status != 206:
                # A 200 here would be the whole wheel: leave without reading it (aiohttp
                # closes the connection on an unread body).
                raise MetadataUnavailable(
                    502, f"upstream answered {response.status} to a Range request"
                )
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None:
                raise MetadataUnavailable(502, "upstream sent a 206 without a usable Content-Range")
            first, last, size = (int(g) for g in match.groups())
            if last < first or last >= size or (expect_start is not None and first != expect_start):
                raise MetadataUnavailable(502, "upstream sent another range than asked for")
            body = await _read_capped(response, last - first + 1)
    except TimeoutError:
        raise MetadataUnavailable(504, "upstream timed out") from None
    except aiohttp.ClientError as error:
        log.warning("range request to %s failed: %s", url, error)
        raise MetadataUnavailable(502, "upstream unreachable") from None
    if len(body) != last - first + 1:
        raise MetadataUnavailable(502, "upstream range body has the wrong length")
    return first, body, size


async def extract_wheel_metadata(
    session: aiohttp.ClientSession, url: str, filename: str
) -> tuple[bytes, int]:
    """The METADATA of the remote wheel at ``url`` and the number of wheel bytes fetched.

    Raises MetadataUnavailable (404: no usable wheel; 502/504: upstream trouble).
    """
    first, tail, size = await _fetch_range(session, url, f"-{TAIL}", None)
    remote = RangeFile(size)
    remote.add(first, tail)
    loop = asyncio.get_running_loop()
    for _ in range(MAX_ROUNDS):
        try:
            # A big central directory takes a while to parse: keep the loop free meanwhile.
            data = await loop.run_in_executor(None, read_metadata, remote, filename)
            return data, remote.fetched()
        except _Missing as missing:
            start = missing.start
            end = min(size, max(missing.end, start + MIN_FETCH))
            if end - start > MAX_FETCH:
                raise MetadataUnavailable(404, f"{filename}: zip directory too large") from None
            got_start, body, _ = await _fetch_range(session, url, f"{start}-{end - 1}", start)
            remote.add(got_start, body)
    raise MetadataUnavailable(404, f"{filename}: zip layout needs too many range requests")


# -- the advertised hash and the local copy ------------------------------------------------


def advertised_metadata_sha256(repo: Repo, dist_path: str) -> str | None:
    """The metadata sha256 the held index gives for the wheel at ``dist_path``."""
    try:
        project = normalize(parse_wheel_filename(filename_of(dist_path))[0])
        files = load_index_files(repo, project)
    except (InvalidWheelFilename, ValueError, OSError):
        return None
    for entry in files or ():
        if entry.path == dist_path:
            return entry.metadata_sha256
    return None


def _read_local(repo: Repo, path: str) -> bytes | None:
    opened = open_regular_fd(str(repo.tier_file(0, path)))
    if opened is None:
        return None
    fd, st = opened
    with open(fd, "rb") as handle:
        return handle.read(st.st_size)


def _store(repo: Repo, path: str, data: bytes) -> None:
    atomic_write(repo.tier_file(0, path), data, durable=True)


# -- one fetch per path at a time ----------------------------------------------------------


@dataclass
class _LoopState:
    inflight: dict[str, asyncio.Future[Outcome]] = field(default_factory=dict)
    missing: dict[str, float] = field(default_factory=dict)  # path -> monotonic expiry


# Futures belong to one event loop; each worker process runs one.
_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
    weakref.WeakKeyDictionary()
)


async def obtain_metadata(state: ServerState, path: str) -> Outcome:
    """The bytes for a ``.metadata`` path that no tier holds (shared by concurrent callers)."""
    dist_path = path.removesuffix(METADATA_SUFFIX)
    if not path.endswith(METADATA_SUFFIX) or not is_valid_file_path(dist_path):
        return Outcome(404, reason="not a metadata file path")
    loop = asyncio.get_running_loop()
    shared = _PER_LOOP.setdefault(loop, _LoopState())
    expiry = shared.missing.get(path)
    if expiry is not None:
        if expiry > time.monotonic():
            return Outcome(404, reason="no verified metadata for this file")
        del shared.missing[path]
    pending = shared.inflight.get(path)
    if pending is None:
        pending = asyncio.ensure_future(_obtain(state, path, dist_path, shared))
        shared.inflight[path] = pending
        pending.add_done_callback(lambda _f: shared.inflight.pop(path, None))
    # Shielded: a client that hangs up does not cancel the fetch the others wait for.
    return await asyncio.shield(pending)


async def _obtain(state: ServerState, path: str, dist_path: str, shared: _LoopState) -> Outcome:
    loop = asyncio.get_running_loop()
    # A fetch that finished just before this one started may have stored it already.
    local = await loop.run_in_executor(None, _read_local, state.repo, path)
    if local is not None:
        return Outcome(200, local, stored=True)
    session = state.session()
    url = state.urls.file(path)
    try:
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
            if response.status == 200:
                return Outcome(200, await _read_capped(response, MAX_METADATA), fetched=True)
            status = response.status
    except MetadataUnavailable as error:
        return Outcome(error.status, reason=error.reason)
    except TimeoutError:
        return Outcome(504, reason="upstream timed out")
    except aiohttp.ClientError as error:
        log.warning("upstream request %s failed: %s", url, error)
        return Outcome(502, reason="upstream unreachable")
    if status not in (404, 410):
        return Outcome(502, reason=f"upstream answered {status}")
    try:
        outcome = await _from_wheel(state, path, dist_path)
    except MetadataUnavailable as error:
        outcome = Outcome(error.status, reason=error.reason)
    if outcome.status == 404:
        if len(shared.missing) > 10_000:
            shared.missing.clear()
        shared.missing[path] = time.monotonic() + NEGATIVE_TTL
    return outcome


async def _from_wheel(state: ServerState, path: str, dist_path: str) -> Outcome:
    filename = filename_of(dist_path)
    if not filename.endswith(".whl"):
        return Outcome(404, reason="upstream has no metadata file for this distribution")
    loop = asyncio.get_running_loop()
    expected = await loop.run_in_executor(None, advertised_metadata_sha256, state.repo, dist_path)
    if expected is None:
        # Nothing to check extracted bytes against: pip would not ask without a hash either.
        return Outcome(404, reason="no metadata hash advertised for this file")
    data, fetched = await extract_wheel_metadata(
        state.session(), state.urls.file(dist_path), filename
    )
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("METADATA of %s does not match the advertised sha256; not served", dist_path)
        return Outcome(404, reason="extracted metadata does not match the advertised hash")
    log.info("extracted METADATA of %s with %d bytes of range requests", dist_path, fetched)
    try:
        await loop.run_in_executor(None, _store, state.repo, path, data)
    except OSError as error:
        log.warning("cannot store %s: %s", path, error)
        return Outcome(200, data, fetched=True)
    return Outcome(200, data, stored=True, fetched=True)


# -- the request handler -------------------------------------------------------------------


async def serve_remote_metadata(request: Request, state: ServerState, path: str) -> Response:
    """Answer a ``.metadata`` request that no tier could: never a redirect (see above)."""
    outcome = await obtain_metadata(state, path)
    if outcome.status != 200:
        return text(outcome.status, outcome.reason)
    if outcome.fetched:
        request.proxied = True
    if outcome.stored:
        # The same path as every local file: ETag, Range, HEAD, conditional requests.
        opened = open_regular_fd(str(state.repo.tier_file(0, path)))
        if opened is not None:
            fd, st = opened
            return answer_file(request, LocalFile(st, None, fd), CONTENT_TYPE)
    return Response(200, [("Content-Type", CONTENT_TYPE)], outcome.body)
