"""Sending a local file fast: HEAD, Range (206/416), conditional requests (304), sendfile.

The stock ``web.FileResponse`` pays two thread-pool hops per request (stat, open). Files here
live on local disks whose metadata is almost always in the page cache, so we open and fstat
in the event loop and hand the descriptor to ``loop.sendfile`` (the kernel's sendfile(2)).
"""

from __future__ import annotations

import asyncio
import os
import stat as stat_module
from email.utils import formatdate, parsedate_to_datetime
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


async def _sendfile_bounded(
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


def open_regular_file(path: str) -> tuple[BinaryIO, os.stat_result] | None:
    """Open a regular file (no symlink games, no directories); None if it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError:  # ELOOP (a symlink), EACCES: never serve it
        return None
    st = os.fstat(fd)
    if not stat_module.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb", buffering=0), st


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
        size = st.st_size
        etag = etag_of(st)
        response_headers = {
            "Content-Type": content_type,
            "ETag": etag,
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        if headers:
            response_headers.update(headers)
        if _not_modified(request, etag, st.st_mtime):
            response = web.StreamResponse(status=304, headers=response_headers)
            del response.headers["Content-Type"]
            await response.prepare(request)
            return response

        status, first, count = 200, 0, size
        requested = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if requested and (if_range is None or if_range.strip() == etag):
            chosen = parse_range(requested, size)
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

        response = web.StreamResponse(status=status, headers=response_headers)
        response.content_length = count
        if request.method == "HEAD" or count == 0:
            await response.prepare(request)
            await response.write_eof()
            return response
        await response.prepare(request)
        request[STATUS_KEY] = status
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        await _sendfile_bounded(transport, handle, first, count, request.get(WRITE_TIMEOUT_KEY))
        request["bytes_sent"] = count  # sendfile bypasses the writer's byte count
        await response.write_eof()
        return response
