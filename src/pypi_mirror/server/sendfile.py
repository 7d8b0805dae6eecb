"""Sending a local file fast: HEAD, Range (206/416), conditional requests (304), sendfile.

The stock ``web.FileResponse`` pays two thread-pool hops per request (stat, open). Files here
live on local disks whose metadata is almost always in the page cache, so we open and fstat
in the event loop. Measured with benchmarks/serve, per request:

- small files (simple pages, metadata files; up to SMALL_FILE) stay in memory, checked with
  one lstat(2), and leave with their headers in a single write;
- larger ones go out with sendfile(2) called directly while the socket takes them (up to
  CORK_LIMIT with the headers corked in front, nginx's tcp_nopush); only what the socket
  cannot take at once goes through ``loop.sendfile``, whose set-up costs more than sending
  100 KB;
- ETag and Last-Modified are formatted once per file version.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat as stat_module
from asyncio.trsock import TransportSocket
from email.utils import formatdate, parsedate_to_datetime
from functools import lru_cache
from typing import BinaryIO

from aiohttp import web

Range = tuple[int, int]  # first byte, last byte (inclusive)
UNSATISFIABLE = "unsatisfiable"


def parse_range(header: str | None, size: int) -> Range | str | None:
    """One ``bytes=`` range → (first, last); UNSATISFIABLE → 416; None → send it all.

    Malformed headers and multi-range requests are ignored (RFC 9110 allows a server to send
    the whole representation instead).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec or not spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not (first_text.isdigit() or first_text == "") or not (
        last_text.isdigit() or last_text == ""
    ):
        return None
    if first_text == "":
        if last_text == "":
            return None
        suffix = int(last_text)
        if suffix == 0:
            return UNSATISFIABLE
        return (max(size - suffix, 0), size - 1) if size else UNSATISFIABLE
    first = int(first_text)
    if first >= size:
        return UNSATISFIABLE
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


def etag_of(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _not_modified(request: web.BaseRequest, etag: str, mtime: float) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        return if_none_match.strip() == "*" or etag in (t.strip() for t in if_none_match.split(","))
    since = request.headers.get("If-Modified-Since")
    if since:
        try:
            return int(mtime) <= int(parsedate_to_datetime(since).timestamp())
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


SENDFILE_SLICE = 16 * 1024 * 1024
WRITE_TIMEOUT_KEY = "write_timeout"  # set on each request by the handler (timeouts.write)
STATUS_KEY = "status"  # the status already sent, for the log line of an aborted transfer
SMALL_FILE = 64 * 1024  # files up to this size are kept in memory by SmallFiles
# A body this small, with its headers, stays below asyncio's default high-water mark (64 KiB)
# even when none of it could be sent at once: the transport never asks the writer to wait.
NEVER_WAITS = 56 * 1024
SMALL_FILES_BUDGET = 32 * 1024 * 1024  # bytes a worker keeps at most
CORK_LIMIT = 1024 * 1024  # bodies up to this size leave corked behind their headers


async def sendfile_bounded(
    transport: asyncio.BaseTransport,
    handle: BinaryIO,
    offset: int,
    count: int,
    write_timeout: float | None,
) -> None:
    """sendfile(2) in slices, each bounded by ``timeouts.write``: a client that stops
    reading is cut off instead of holding the connection for ever."""
    loop = asyncio.get_running_loop()
    end = offset + count
    while offset < end:
        size = min(SENDFILE_SLICE, end - offset)
        try:
            async with asyncio.timeout(write_timeout):
                await loop.sendfile(transport, handle, offset, size)  # type: ignore[arg-type]
        except TimeoutError:
            transport.abort()  # type: ignore[attr-defined]
            raise ConnectionResetError("client stopped reading (timeouts.write)") from None
        offset += size


def open_regular_fd(path: str) -> tuple[int, os.stat_result] | None:
    """Open a regular file (no symlink games, no directories); None if it is not there.

    A bare descriptor: a file object would cost an extra fstat and an allocation per request.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # missing; ELOOP (a symlink); EACCES: never serve it
        return None
    st = os.fstat(fd)
    if not stat_module.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def open_regular_file(path: str) -> tuple[BinaryIO, os.stat_result] | None:
    """Like ``open_regular_fd``, as a file object."""
    opened = open_regular_fd(path)
    if opened is None:
        return None
    fd, st = opened
    return os.fdopen(fd, "rb", buffering=0), st


@lru_cache(maxsize=4096)
def validators(mtime_ns: int, size: int, mtime: float) -> tuple[str, str]:
    """ETag and Last-Modified of one file version (formatting a date is slow; files repeat)."""
    return f'"{mtime_ns:x}-{size:x}"', formatdate(mtime, usegmt=True)


async def send_file(
    request: web.BaseRequest,
    handle: BinaryIO,
    st: os.stat_result,
    *,
    content_type: str,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Answer with an open file; closes it. Sends nothing but headers for HEAD and 304."""
    with handle:
        return await _send(request, handle.fileno(), handle, None, st, content_type, headers)


async def _send(
    request: web.BaseRequest,
    fd: int,
    handle: BinaryIO | None,
    body: bytes | None,
    st: os.stat_result,
    content_type: str,
    headers: dict[str, str] | None,
) -> web.StreamResponse:
    size = st.st_size
    etag, last_modified = validators(st.st_mtime_ns, size, st.st_mtime)
    response_headers = {
        "Content-Type": content_type,
        "ETag": etag,
        "Last-Modified": last_modified,
        "Accept-Ranges": "bytes",
    }
    if headers:
        response_headers.update(headers)
    request_headers = request.headers
    if (
        "If-None-Match" in request_headers or "If-Modified-Since" in request_headers
    ) and _not_modified(request, etag, st.st_mtime):
        response = web.StreamResponse(status=304, headers=response_headers)
        del response.headers["Content-Type"]
        await response.prepare(request)
        return response

    status, first, count = 200, 0, size
    requested = request_headers.get("Range")
    if requested:
        if_range = request_headers.get("If-Range")
        chosen = (
            parse_range(requested, size) if if_range is None or if_range.strip() == etag else None
        )
        if chosen == UNSATISFIABLE:
            response = web.StreamResponse(
                status=416, headers={"Content-Range": f"bytes */{size}", **response_headers}
            )
            response.content_length = 0
            await response.prepare(request)
            await response.write_eof()
            return response
        if isinstance(chosen, tuple):
            first, last = chosen
            status, count = 206, last - first + 1
            response_headers["Content-Range"] = f"bytes {first}-{last}/{size}"

    if request.method == "HEAD" or count == 0:
        response = web.StreamResponse(status=status, headers=response_headers)
        response.content_length = count
        await response.prepare(request)
        await response.write_eof()
        return response
    if body is not None:
        return await _send_from_memory(request, status, response_headers, body, first, count)
    response = web.StreamResponse(status=status, headers=response_headers)
    response.content_length = count
    transport = request.transport
    sock = plain_socket(transport)
    # Cork: the headers and the body leave in full packets, as nginx does with tcp_nopush;
    # uncorked below, whatever happens. Not for large bodies, where it gains nothing and
    # was measured to cost about a quarter more CPU per 5 MB response.
    cork = sock is not None and count <= CORK_LIMIT
    if cork:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    try:
        await response.prepare(request)
        request[STATUS_KEY] = status
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        sent = 0
        if sock is not None and transport.get_write_buffer_size() == 0:
            sent = sendfile_now(sock.fileno(), fd, first, count)
    finally:
        if cork:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    if sent < count:
        remaining = (transport, first + sent, count - sent, request.get(WRITE_TIMEOUT_KEY))
        if handle is None:
            with os.fdopen(os.dup(fd), "rb", buffering=0) as copy:  # loop.sendfile wants one
                await sendfile_bounded(remaining[0], copy, *remaining[1:])
        else:
            await sendfile_bounded(remaining[0], handle, *remaining[1:])
    request["bytes_sent"] = count  # sendfile bypasses the writer's byte count
    await response.write_eof()
    return response


def plain_socket(transport: asyncio.BaseTransport | None) -> TransportSocket | None:
    """The socket under a plain TCP transport; None under TLS (bytes must go through it)."""
    if transport is None or transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def sendfile_now(sock_fd: int, fd: int, offset: int, count: int) -> int:
    """As much of the body as the socket takes right now, without a trip through the event
    loop (``loop.sendfile`` pauses the transport, waits for its buffer and registers the
    socket with the selector: more work than sending a small file). Bytes left over go the
    usual way. Called only when the transport holds no unsent bytes, so nothing reorders."""
    try:
        return os.sendfile(sock_fd, fd, offset, count)
    except (BlockingIOError, InterruptedError):
        return 0
    except ConnectionError:
        raise
    except OSError:  # sendfile(2) cannot read this file: the loop's copying fallback can
        return 0


async def _send_from_memory(
    request: web.BaseRequest,
    status: int,
    headers: dict[str, str],
    body: bytes,
    first: int,
    count: int,
) -> web.StreamResponse:
    """Headers and body in one write (aiohttp joins them), bounded by ``timeouts.write``."""
    if count != len(body):
        body = body[first : first + count]
    response = web.Response(status=status, headers=headers, body=body)
    await response.prepare(request)
    request[STATUS_KEY] = status
    if count <= NEVER_WAITS:
        await response.write_eof()  # below the transport's high-water mark: never waits
    else:
        await _write_eof_bounded(request, response)
    request["bytes_sent"] = count  # like the sendfile path: the body, not the headers
    return response


async def _write_eof_bounded(request: web.BaseRequest, response: web.StreamResponse) -> None:
    try:
        async with asyncio.timeout(request.get(WRITE_TIMEOUT_KEY)):
            await response.write_eof()
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("client stopped reading (timeouts.write)") from None


class LocalFile:
    """A local file about to be sent: its stat, and either its whole body (small files, from
    memory) or an open descriptor. Use it as a context manager: leaving closes the descriptor."""

    __slots__ = ("body", "fd", "st")

    def __init__(self, st: os.stat_result, body: bytes | None, fd: int = -1) -> None:
        self.st = st
        self.body = body
        self.fd = fd

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def send(
        self,
        request: web.BaseRequest,
        *,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        """Like ``send_file``; the descriptor stays open until the ``with`` block ends."""
        return await _send(request, self.fd, None, self.body, self.st, content_type, headers)


class SmallFiles:
    """Small files (simple pages, metadata files) kept in memory between requests.

    A hit costs one lstat(2) instead of open, fstat, read and close, and the body leaves with
    its headers in one write. An entry is used only while the file's identity — inode, size,
    mtime and ctime, as lstat reports them now — is the one it was read with; pages and
    packages are only ever replaced by rename (a new inode), so a changed file is never
    served from memory. When the budget is spent the memory starts over.
    """

    def __init__(self, budget: int = SMALL_FILES_BUDGET) -> None:
        self._budget = budget
        self._used = 0
        self._entries: dict[str, tuple[tuple[int, int, int, int, int], os.stat_result, bytes]] = {}

    def open(self, path: str) -> LocalFile | None:
        """The regular file at ``path``, from memory when it is small; None if there is none
        (missing, a symlink, a directory, unreadable: as ``open_regular_fd``)."""
        entry = self._entries.get(path)
        if entry is not None:
            try:
                now = os.lstat(path)
            except OSError:
                now = None
            if now is not None and _identity(now) == entry[0]:
                return LocalFile(entry[1], entry[2])
            self._forget(path)
        opened = open_regular_fd(path)
        if opened is None:
            return None
        fd, st = opened
        if st.st_size > SMALL_FILE:
            return LocalFile(st, None, fd)
        try:
            body = os.pread(fd, st.st_size + 1, 0)
        except BaseException:
            os.close(fd)
            raise
        if len(body) != st.st_size:  # written to in place while we read: keep nothing
            return LocalFile(st, None, fd)
        os.close(fd)
        self._remember(path, st, body)
        return LocalFile(st, body)

    def _remember(self, path: str, st: os.stat_result, body: bytes) -> None:
        if self._used + len(body) > self._budget:
            self._entries.clear()
            self._used = 0
        self._entries[path] = (_identity(st), st, body)
        self._used += len(body)

    def _forget(self, path: str) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._used -= len(entry[2])


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


small_files = SmallFiles()  # one per worker process (each fork starts with it empty)
