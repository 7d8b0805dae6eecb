"""Answering with a local file: HEAD, Range (206/416), conditional requests (304).

Files live on local disks whose metadata is almost always in the page cache, so they are
opened and stat'ed in the event loop (as nginx does), from every tier: a thread hop costs more
than the open. Small files (simple pages, metadata files; up to SMALL_FILE) stay in memory,
checked with one lstat(2); larger ones go out by sendfile(2) (protocol.py). ETag and
Last-Modified are formatted once per file version.
"""

from __future__ import annotations

import os
import re
import stat as stat_module
import time
from collections import OrderedDict
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from functools import lru_cache

from pypi_mirror.server.http import FileBody, Request, Response

Range = tuple[int, int]  # first byte, last byte (inclusive)
UNSATISFIABLE = "unsatisfiable"
SMALL_FILE = 64 * 1024  # files up to this size are kept in memory by SmallFiles
SMALL_FILES_BUDGET = 32 * 1024 * 1024  # bytes a worker keeps at most
HELD_FILE = 8 * 1024 * 1024  # files up to this size keep their descriptor open...
HELD_FILES = 128  # ...this many per worker (they pin at most 1 GiB of deleted files)
SWEEP_INTERVAL = 5.0  # seconds between checks of the held descriptors
# ASCII digits only (str.isdigit() also takes "²"), at most 18 of them: any offset with more
# is beyond every file, so it is judged without ever building a huge integer.
_RANGE = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.ASCII)
_MAX_DIGITS = 18


def parse_range(header: str | None, size: int) -> Range | str | None:
    """One ``bytes=`` range → (first, last); UNSATISFIABLE → 416; None → send it all.

    Malformed headers and multi-range requests are ignored (RFC 9110 allows a server to send
    the whole representation instead).
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if first_text == "":
        if last_text == "":
            return None
        if len(last_text) > _MAX_DIGITS:  # a suffix longer than any file: all of it
            return (0, size - 1) if size else UNSATISFIABLE
        suffix = int(last_text)
        if suffix == 0:
            return UNSATISFIABLE
        return (max(size - suffix, 0), size - 1) if size else UNSATISFIABLE
    if len(first_text) > _MAX_DIGITS:
        return UNSATISFIABLE
    first = int(first_text)
    if first >= size:
        return UNSATISFIABLE
    if not last_text or len(last_text) > _MAX_DIGITS:
        return first, size - 1
    last = int(last_text)
    if last < first:
        return None
    return first, min(last, size - 1)


@lru_cache(maxsize=4096)
def validators(mtime_ns: int, size: int, mtime: float) -> tuple[str, str]:
    """ETag and Last-Modified of one file version (formatting a date is slow; files repeat)."""
    return f'"{mtime_ns:x}-{size:x}"', formatdate(mtime, usegmt=True)


def not_modified(request: Request, etag: str, mtime: float) -> bool:
    if_none_match = request.header(b"if-none-match")
    if if_none_match is not None:
        return if_none_match.strip() == "*" or etag in (
            tag.strip().removeprefix("W/") for tag in if_none_match.split(",")
        )
    since = request.header(b"if-modified-since")
    if since:
        try:
            return int(mtime) <= int(parsedate_to_datetime(since).timestamp())
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
    return False


def open_regular_fd(path: str) -> tuple[int, os.stat_result] | None:
    """Open a regular file (no symlink games, no directories); None if it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):  # missing; ELOOP (a symlink); EACCES; a NUL: never serve it
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat_module.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


class LocalFile:
    """A local file about to be sent: its stat, and either its whole body (small files, from
    memory) or a descriptor, which ``close`` gives back once sent (closing it, or returning
    it to the cache of open descriptors that lent it)."""

    __slots__ = ("_give_back", "body", "fd", "st")

    def __init__(
        self,
        st: os.stat_result,
        body: bytes | None,
        fd: int = -1,
        give_back: Callable[[], None] | None = None,
    ) -> None:
        self.st = st
        self.body = body
        self.fd = fd
        self._give_back = give_back

    def close(self) -> None:
        if self._give_back is not None:
            self._give_back()
            self._give_back = None
            self.fd = -1
        elif self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def answer_file(
    request: Request,
    local: LocalFile,
    content_type: str,
    extra: list[tuple[str, str]] | None = None,
) -> Response:
    """200, 206, 304 or 416 with ``local``'s bytes; the descriptor is closed once sent."""
    st = local.st
    size = st.st_size
    etag, last_modified = validators(st.st_mtime_ns, size, st.st_mtime)
    headers = [
        ("Content-Type", content_type),
        ("ETag", etag),
        ("Last-Modified", last_modified),
        ("Accept-Ranges", "bytes"),
    ]
    if extra:
        headers.extend(extra)
    request_headers = request.headers
    if (
        b"if-none-match" in request_headers or b"if-modified-since" in request_headers
    ) and not_modified(request, etag, st.st_mtime):
        local.close()
        return Response(304, headers[1:])
    status, first, count = 200, 0, size
    if b"range" in request_headers:
        if_range = request.header(b"if-range")
        chosen = (
            parse_range(request.header(b"range"), size)
            if if_range is None or if_range.strip() == etag
            else None
        )
        if chosen == UNSATISFIABLE:
            local.close()
            headers.append(("Content-Range", f"bytes */{size}"))
            return Response(416, headers)
        if isinstance(chosen, tuple):
            first, last = chosen
            status, count = 206, last - first + 1
            headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    if local.body is not None:
        body = local.body if count == size else local.body[first : first + count]
        return Response(status, headers, body)
    if count == 0:
        local.close()
        return Response(status, headers)
    return Response(status, headers, file=FileBody(local.fd, first, count, local.close))


class _Held:
    """A descriptor kept open between requests; closed once retired and no answer uses it."""

    __slots__ = ("fd", "identity", "retired", "st", "users")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.st = st
        self.identity = _identity(st)
        self.users = 0
        self.retired = False

    def lend(self) -> LocalFile:
        self.users += 1
        return LocalFile(self.st, None, self.fd, self.give_back)

    def give_back(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            os.close(self.fd)

    def retire(self) -> None:
        if not self.retired:
            self.retired = True
            if self.users == 0:
                os.close(self.fd)


class SmallFiles:
    """Local files kept ready between requests, as nginx's open_file_cache.

    Small files (simple pages, metadata files; up to SMALL_FILE) stay in memory: a hit costs
    one lstat(2) instead of open, fstat, read and close. Larger ones up to HELD_FILE keep
    their descriptor open (at most HELD_FILES of them): a hit costs one lstat(2) instead of
    open, fstat and close. An entry is used only while the file's identity — inode, size,
    mtime and ctime, as lstat reports them now — is the one it was opened with; pages and
    packages are only ever replaced by rename (a new inode), so a changed file is never
    served from an old copy. Held descriptors are checked every SWEEP_INTERVAL too, so a
    file sync deleted does not keep its disk space for longer than that.
    """

    def __init__(self, budget: int = SMALL_FILES_BUDGET) -> None:
        self._budget = budget
        self._used = 0
        self._entries: dict[str, tuple[tuple[int, int, int, int, int], os.stat_result, bytes]] = {}
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._swept = time.monotonic()

    def open(self, path: str) -> LocalFile | None:
        """The regular file at ``path``, from memory when it is small; None if there is none
        (missing, a symlink, a directory, unreadable: as ``open_regular_fd``)."""
        entry = self._entries.get(path)
        if entry is not None:
            now = _lstat(path)
            if now is not None and _identity(now) == entry[0]:
                return LocalFile(entry[1], entry[2])
            self._forget(path)
        held = self._held.get(path)
        if held is not None:
            now = _lstat(path)
            if now is not None and _identity(now) == held.identity:
                self._held.move_to_end(path)
                return held.lend()
            del self._held[path]
            held.retire()
        opened = open_regular_fd(path)
        if opened is None:
            return None
        fd, st = opened
        if st.st_size > SMALL_FILE:
            if st.st_size > HELD_FILE:
                return LocalFile(st, None, fd)
            return self._hold(path, fd, st)
        try:
            body = os.pread(fd, st.st_size + 1, 0)
        except OSError:
            os.close(fd)
            return None
        if len(body) != st.st_size:  # written to in place while we read: keep nothing
            return LocalFile(st, None, fd)
        os.close(fd)
        self._remember(path, st, body)
        return LocalFile(st, body)

    def _hold(self, path: str, fd: int, st: os.stat_result) -> LocalFile:
        self.sweep_if_due()
        while len(self._held) >= HELD_FILES:
            _path, oldest = self._held.popitem(last=False)
            oldest.retire()
        held = self._held[path] = _Held(fd, st)
        return held.lend()

    def sweep_if_due(self) -> None:
        """Retire descriptors whose file was deleted or replaced since the last sweep (also
        called once a second by the worker, so an idle server pins no deleted file)."""
        if time.monotonic() - self._swept <= SWEEP_INTERVAL:
            return
        self._swept = time.monotonic()
        for path, held in list(self._held.items()):
            now = _lstat(path)
            if now is None or _identity(now) != held.identity:
                del self._held[path]
                held.retire()

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


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (OSError, ValueError):
        return None


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


small_files = SmallFiles()  # one per worker process (each fork starts with it empty)
