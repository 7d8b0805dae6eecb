"""A fast path in front of aiohttp for the two requests a mirror mostly answers.

aiohttp's request machinery (parser, request and response objects, the handler task) costs
more CPU than everything our own code does for a small response. Each plain-HTTP connection
therefore starts with ``FastProtocol``: it reads request heads itself and answers, byte for
byte as the aiohttp path would (status line, headers in the same order, body, access-log
line, vote), only

1. GET/HEAD ``{prefix}/simple/{normalised name}/`` whose page is local and fresh (no
   on-demand fetch due), acceptable by negotiation, without a query;
2. GET/HEAD ``{prefix}/packages/{valid file path}`` present in the hottest tier;

with no Range, conditional, body, Expect or Upgrade header. Anything else — another path, a
query, an odd or malformed head, a head larger than aiohttp allows — hands the connection to
aiohttp for the rest of its life, with every byte not answered yet: aiohttp then behaves as if
it had had the connection from the start. TLS connections never take the fast path.

Debugging switch: ``PYPI_MIRROR_NO_FASTPATH=1`` in the environment of ``pypi-mirror serve``
turns the fast path off (every connection goes to aiohttp from its first byte), to compare
both paths or to rule this module out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable

from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

from pypi_mirror.names import is_valid_file_path, is_valid_project_name, normalize
from pypi_mirror.server.accesslog import format_entry
from pypi_mirror.server.clientip import IPAddress
from pypi_mirror.server.files import content_type_of
from pypi_mirror.server.negotiate import V1_JSON, choose_content_type
from pypi_mirror.server.ondemand import OnDemandIndex
from pypi_mirror.server.sendfile import (
    CORK_LIMIT,
    SENDFILE_SLICE,
    LocalFile,
    plain_socket,
    sendfile_bounded,
    sendfile_now,
    small_files,
    validators,
)
from pypi_mirror.server.simple import SimpleIndex
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

DISABLE_ENV = "PYPI_MIRROR_NO_FASTPATH"
# aiohttp refuses lines over 8190 bytes and more than 100 headers (as serve configures it):
# anything near those limits is left to aiohttp, which answers 400.
MAX_LINE = 8000
MAX_HEADERS = 96
MAX_HEAD = MAX_LINE * (MAX_HEADERS + 1)  # no complete head yet beyond this: aiohttp decides
MEMO_LIMIT = 10_000
# Any request header among these sends the request to aiohttp (it alone handles them).
_HANDOFF_HEADERS = frozenset(
    (
        b"range",
        b"if-range",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"transfer-encoding",
        b"content-length",
        b"expect",
        b"upgrade",
        b"http2-settings",
    )
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Bytes aiohttp's parser may treat specially (controls, non-ASCII): such heads go to aiohttp.
_ODD_BYTE = re.compile(rb"[^\t\r\n\x20-\x7e]")
_PAGE_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_REASON = b"200 OK"


def fastpath_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") in ("", "0")


class FastServer:
    """What every fast connection of a worker shares, and the set of those connections."""

    def __init__(
        self,
        state: ServerState,
        simple: SimpleIndex,
        ondemand: OnDemandIndex,
        aiohttp_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        config = state.config
        self.state = state
        self.simple = simple
        self.ondemand = ondemand
        self.aiohttp_factory = aiohttp_factory
        self.prefix = config.prefix
        self.simple_prefix = f"{self.prefix}/simple/"
        self.packages_prefix = f"{self.prefix}/packages/"
        self.read_timeout = config.timeouts.read
        self.idle_timeout = config.timeouts.idle
        self.page_ttl = config.upstream.page_ttl
        self.write_timeout = config.timeouts.write
        self.log_format = config.log.format
        self.access_log = state.access_log
        self.tier0 = state.repo.tiers[0].path if state.repo.tiers else None
        self.connections: set[FastProtocol] = set()
        self.closing = False
        # Memos of pure functions of request strings (bounded: clients choose them).
        self._names: dict[str, bool] = {}
        self._chosen: dict[str | None, str | None] = {}
        self._header_names: set[bytes] = set()
        # Raw request head → its parse (clients send the same few heads over and over).
        self.heads: dict[bytes, _Head | None] = {}

    def __call__(self) -> asyncio.Protocol:
        return FastProtocol(self)

    # -- pure helpers, memoised ------------------------------------------------------------

    def is_page_name(self, name: str) -> bool:
        known = self._names.get(name)
        if known is None:
            known = bool(
                _PAGE_NAME.fullmatch(name)
                and is_valid_project_name(name)
                and normalize(name) == name
            )
            _remember(self._names, name, known)
        return known

    def negotiate(self, accept: str | None) -> str | None:
        try:
            return self._chosen[accept]
        except KeyError:
            return _remember(self._chosen, accept, choose_content_type(accept, None))  # type: ignore[no-any-return]

    def client(self, remote: str | None, forwarded: str | None) -> tuple[IPAddress | None, str]:
        return self.state.clients.resolve(remote, forwarded)

    def valid_header_name(self, name: bytes) -> bool:
        if name in self._header_names:
            return True
        if not _TOKEN.fullmatch(name):
            return False
        if len(self._header_names) >= MEMO_LIMIT:
            self._header_names.clear()
        self._header_names.add(name)
        return True

    # -- shutdown --------------------------------------------------------------------------

    def close_idle(self) -> None:
        """Stop keeping connections alive: idle ones close now, busy ones after their answer."""
        self.closing = True
        for connection in list(self.connections):
            connection.shut_down()

    async def wait_closed(self, timeout: float) -> None:
        """Until every fast connection is gone; after ``timeout`` the rest are cut."""
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()


def _remember(memo: dict, key: object, value: object) -> object:  # type: ignore[type-arg]
    if len(memo) >= MEMO_LIMIT:
        memo.clear()
    memo[key] = value
    return value


class _Head:
    """One parsed request head (only what the fast path needs); never changed once made,
    as the same object answers every later request with the same bytes."""

    __slots__ = (
        "accept",
        "forwarded",
        "keep_alive",
        "method",
        "referer",
        "target",
        "user_agent",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.version = ""
        self.keep_alive = True
        self.accept: str | None = None
        self.forwarded: str | None = None
        self.user_agent: str | None = None
        self.referer = ""


_UNKNOWN = _Head()


class _Pump:
    """Writer callback of ``FastProtocol._pump``: sendfile(2) from ``position`` to ``stop``
    as far as the socket takes it each time it is writable; ``done`` holds the end."""

    __slots__ = ("done", "fd", "loop", "position", "sock_fd", "stop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock_fd: int, fd: int, position: int, stop: int
    ) -> None:
        self.loop = loop
        self.sock_fd = sock_fd
        self.fd = fd
        self.position = position
        self.stop = stop
        self.done: asyncio.Future[int] = loop.create_future()

    def ready(self) -> None:
        try:
            while self.position < self.stop:
                written = os.sendfile(
                    self.sock_fd, self.fd, self.position, self.stop - self.position
                )
                if written == 0:  # the file shrank under us
                    raise ConnectionResetError("file ended early")
                self.position += written
        except (BlockingIOError, InterruptedError):
            return  # stays registered: called again when the socket drains
        except OSError as error:
            self.loop._remove_writer(self.sock_fd)  # type: ignore[attr-defined]
            if not self.done.done():
                self.done.set_exception(ConnectionResetError(str(error)))
            return
        self.loop._remove_writer(self.sock_fd)  # type: ignore[attr-defined]
        if not self.done.done():
            self.done.set_result(self.position)


class FastProtocol(asyncio.Protocol):
    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.buffer = b""
        self.busy = False  # a response is being sent by a task
        self.paused = False  # the transport asked us to stop writing
        self.handed_off = False
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since: float | None = None  # loop time the connection became idle
        self.write_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        self.server.connections.add(self)
        if self.server.closing:
            transport.close()
            return
        self._start_idle()

    def data_received(self, data: bytes) -> None:
        if self.handed_off:  # cannot happen (the transport has a new protocol); be safe
            return
        self.buffer += data
        self.idle_since = None
        if self.busy or self.paused:
            if len(self.buffer) > MAX_HEAD and self.transport is not None:
                self.transport.pause_reading()  # resumed when the answer is out
            return
        self._process()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self.server.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True
        if self.write_timer is None and self.server.write_timeout:
            self.write_timer = self.loop.call_later(self.server.write_timeout, self.abort)

    def resume_writing(self) -> None:
        self.paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if not self.busy:
            self._after_response(True)

    # -- the request loop ------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every complete request in the buffer that the fast path can take."""
        transport = self.transport
        while transport is not None and not self.busy and not self.paused:
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if not buffer:
                    self._cancel_head_timer()
                    self._start_idle()
                    return
                if len(buffer) > MAX_HEAD:
                    self._hand_off()
                    return
                if self.head_timer is None:
                    self.head_timer = self.loop.call_later(
                        self.server.read_timeout, self._head_too_slow
                    )
                return
            self._cancel_head_timer()
            raw = buffer[:end]
            heads = self.server.heads
            head = heads.get(raw, _UNKNOWN)
            if head is _UNKNOWN:
                head = self._parse(raw)
                _remember(heads, raw, head)
            if head is None or not self._answer(head):
                self._hand_off()
                return
            self.buffer = buffer[end + 4 :]
            if not head.keep_alive or self.server.closing:
                if not self.busy:
                    transport.close()
                    self.buffer = b""
                return
            transport = self.transport

    def _parse(self, raw: bytes) -> _Head | None:
        """The head's fields, or None when aiohttp should judge it."""
        if _ODD_BYTE.search(raw):
            return None
        lines = raw.split(b"\r\n")
        if len(lines) > MAX_HEADERS:
            return None
        request_line = lines[0]
        if len(request_line) > MAX_LINE:
            return None
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return None
        method, target, version = parts
        if method not in (b"GET", b"HEAD") or version not in (b"HTTP/1.1", b"HTTP/1.0"):
            return None
        if not target.startswith(b"/") or b"?" in target or b"%" in target or b"#" in target:
            return None
        head = _Head()
        head.method = method.decode()
        head.target = target.decode()
        http10 = version == b"HTTP/1.0"
        head.version = "1.0" if http10 else "1.1"
        seen: set[bytes] = set()
        connection: bytes | None = None
        valid_name = self.server.valid_header_name
        for line in lines[1:]:
            if len(line) > MAX_LINE:
                return None
            name, colon, value = line.partition(b":")
            if not colon or not valid_name(name):
                return None
            name = name.lower()
            if name in seen or name in _HANDOFF_HEADERS:
                return None
            seen.add(name)
            value = value.strip(b" \t")
            if name == b"accept":
                head.accept = value.decode()
            elif name == b"user-agent":
                head.user_agent = value.decode()
            elif name == b"x-forwarded-for":
                head.forwarded = value.decode()
            elif name == b"referer":
                head.referer = value.decode()
            elif name == b"connection":
                connection = value.lower()
        if not http10 and b"host" not in seen:
            return None
        if connection is None:
            head.keep_alive = not http10
        elif connection == b"close":
            head.keep_alive = False
        elif connection == b"keep-alive":
            head.keep_alive = True
        else:
            return None
        return head

    def _answer(self, head: _Head) -> bool:
        """Answer the request if the fast path can; False to hand it to aiohttp."""
        server = self.server
        target = head.target
        if target.startswith(server.simple_prefix):
            return self._page(head, target[len(server.simple_prefix) :])
        if target.startswith(server.packages_prefix):
            return self._file(head, target[len(server.packages_prefix) :])
        return False

    def _page(self, head: _Head, rest: str) -> bool:
        server = self.server
        if not rest.endswith("/"):
            return False
        name = rest[:-1]
        if not server.is_page_name(name):
            return False
        content_type = server.negotiate(head.accept)
        if content_type is None:
            return False
        simple = server.simple
        paths = simple._pages.get(name)
        if paths is None:
            repo = server.state.repo
            paths = (str(repo.project_html(name)), str(repo.project_json(name)))
            if len(simple._pages) >= MEMO_LIMIT:
                simple._pages.clear()
            simple._pages[name] = paths
        is_json = content_type == V1_JSON
        path = paths[1] if is_json else paths[0]
        # OnDemandIndex.needs_fetch's rule, with the stat it would make: a page younger than
        # the TTL is fresh; an older one asks needs_fetch itself (it knows who owns it).
        try:
            html_mtime = os.stat(paths[0]).st_mtime
        except OSError:
            return False
        if time.time() - html_mtime >= server.page_ttl:
            exists, fetch = server.ondemand.needs_fetch(name)
            if not exists or fetch:
                return False
        local = small_files.open(path)
        if local is None:
            return False
        serial = simple.serials.get(path, local.st, path, is_json)
        extra = (
            f"Vary: Accept\r\nX-PyPI-Last-Serial: {serial}\r\n" if serial else "Vary: Accept\r\n"
        )
        self._send(head, local, content_type, extra, None)
        return True

    def _file(self, head: _Head, path: str) -> bool:
        server = self.server
        if server.tier0 is None or not is_valid_file_path(path):
            return False
        local = small_files.open(f"{server.tier0}/{path}")
        if local is None:
            return False
        self._send(head, local, content_type_of(path), "", path)
        return True

    # -- sending ---------------------------------------------------------------------------

    def _send(
        self, head: _Head, local: LocalFile, content_type: str, extra: str, vote: str | None
    ) -> None:
        started = time.monotonic()
        st = local.st
        size = st.st_size
        etag, last_modified = validators(st.st_mtime_ns, size, st.st_mtime)
        connection = ""
        if head.version == "1.0":
            if head.keep_alive:
                connection = "Connection: keep-alive\r\n"
        elif not head.keep_alive:
            connection = "Connection: close\r\n"
        header = (
            f"HTTP/{head.version} 200 OK\r\n"
            f"Content-Type: {content_type}\r\n"
            f"ETag: {etag}\r\n"
            f"Last-Modified: {last_modified}\r\n"
            "Accept-Ranges: bytes\r\n"
            f"{extra}"
            f"Content-Length: {size}\r\n"
            f"Date: {rfc822_formatted_time()}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\n"
            f"{connection}\r\n"
        ).encode()
        transport = self.transport
        assert transport is not None
        if head.method == "HEAD" or size == 0:
            local.__exit__()
            transport.write(header)
            # aiohttp logs the header bytes as the size of a body-less answer
            self._finish(head, len(header), started, vote)
            return
        if local.body is not None:
            transport.write(header + local.body)
            self._finish(head, size, started, vote)
            return
        self._send_large(head, local, header, started, vote)

    def _send_large(
        self, head: _Head, local: LocalFile, header: bytes, started: float, vote: str | None
    ) -> None:
        """As sendfile.py's ``_send`` does for a file too large for memory: the headers, then
        as much of the body as the socket takes now by sendfile(2); a task sends the rest."""
        count = local.st.st_size
        transport = self.transport
        assert transport is not None
        sent = 0
        try:
            sock = plain_socket(transport)
            cork = sock is not None and count <= CORK_LIMIT
            if cork:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # type: ignore[union-attr]
            try:
                transport.write(header)
                if sock is not None and transport.get_write_buffer_size() == 0:
                    sent = sendfile_now(sock.fileno(), local.fd, 0, count)
            finally:
                if cork and not transport.is_closing():
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # type: ignore[union-attr]
        except ConnectionError:
            local.__exit__()
            self._log(head, 200, 0, started)
            transport.abort()
            return
        if sent == count:
            local.__exit__()
            self._finish(head, count, started, vote)
            return
        self.busy = True
        self.task = self.loop.create_task(self._send_rest(head, local, sent, started, vote))

    async def _send_rest(
        self, head: _Head, local: LocalFile, sent: int, started: float, vote: str | None
    ) -> None:
        """The part of a large body the socket could not take at once (timeouts.write)."""
        count = local.st.st_size
        transport = self.transport
        try:
            with local:
                if transport is None or transport.is_closing():
                    raise ConnectionResetError("client went away")
                sock = plain_socket(transport)
                if (
                    sock is not None
                    and transport.get_write_buffer_size() == 0
                    and hasattr(self.loop, "_add_writer")
                ):
                    await self._pump(sock.fileno(), local.fd, sent, count)
                else:
                    with os.fdopen(os.dup(local.fd), "rb", buffering=0) as copy:
                        await sendfile_bounded(
                            transport, copy, sent, count - sent, self.server.write_timeout
                        )
        except (ConnectionError, asyncio.CancelledError) as error:
            self._log(head, 200, 0, started)  # as aiohttp logs an aborted transfer
            if self.transport is not None:
                self.transport.abort()
            self.busy = False
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        except Exception:
            log.exception("fast path: sending %s failed", head.target)
            if self.transport is not None:
                self.transport.abort()
            self.busy = False
            return
        self.busy = False
        self._finish(head, count, started, vote)
        self._after_response(head.keep_alive)

    async def _pump(self, sock_fd: int, fd: int, offset: int, end: int) -> None:
        """sendfile(2) each time the socket can take more, until ``end``; each slice of
        SENDFILE_SLICE bytes bounded by ``timeouts.write``, as ``sendfile_bounded``.

        ``loop.sendfile`` removes and re-adds its writer on the socket between any two
        sendfile calls (two epoll_ctl each time); this one stays registered until done. The
        transport holds no unsent bytes and writes nothing meanwhile (the protocol is busy),
        so the socket is ours alone. The selector loop's private ``_add_writer`` is what
        ``loop.sendfile`` itself uses on a transport's socket (the public one refuses it)."""
        loop = self.loop
        while offset < end:
            pump = _Pump(loop, sock_fd, fd, offset, min(offset + SENDFILE_SLICE, end))
            loop._add_writer(sock_fd, pump.ready)  # type: ignore[attr-defined]
            try:
                async with asyncio.timeout(self.server.write_timeout):
                    offset = await pump.done
            except TimeoutError:
                if self.transport is not None:
                    self.transport.abort()
                raise ConnectionResetError("client stopped reading (timeouts.write)") from None
            finally:
                loop._remove_writer(sock_fd)  # type: ignore[attr-defined]

    def _finish(self, head: _Head, size: int, started: float, vote: str | None) -> None:
        if vote is not None and head.method == "GET":
            address = self.server.client(self.remote, head.forwarded)[0]
            self.server.state.vote_for(vote, address, head.user_agent)
        self._log(head, 200, size, started)

    def _after_response(self, keep_alive: bool) -> None:
        """After a task's answer (or a write pause): next request, or close."""
        if self.transport is None or self.handed_off or self.transport.is_closing():
            return
        if not keep_alive or self.server.closing:
            self.transport.close()
            return
        self.transport.resume_reading()
        self._process()

    def _log(self, head: _Head, status: int, size: int, started: float) -> None:
        writer = self.server.access_log
        if writer is None:
            return
        line = format_entry(
            self.server.log_format,
            method=head.method,
            path=head.target,
            version=head.version,
            status=status,
            size=size,
            seconds=time.monotonic() - started,
            client_ip=self.server.client(self.remote, head.forwarded)[1],
            user_agent=head.user_agent or "",
            referer=head.referer,
            proxied=False,
        )
        writer.write(line)

    # -- hand-off, timers, shutdown --------------------------------------------------------

    def _hand_off(self) -> None:
        """aiohttp takes the connection, with every byte not answered yet."""
        transport = self.transport
        self._cancel_timers()
        self.server.connections.discard(self)
        self.handed_off = True
        if transport is None:
            return
        if self.server.closing:
            transport.close()
            return
        data, self.buffer = self.buffer, b""
        handler = self.server.aiohttp_factory()
        handler.connection_made(transport)
        transport.set_protocol(handler)
        transport.resume_reading()
        if data:
            handler.data_received(data)

    def _start_idle(self) -> None:
        """``timeouts.idle`` from now. One timer per connection, re-armed when it fires
        (scheduling a timer per request cost more than parsing the request)."""
        self.idle_since = self.loop.time()
        if self.idle_timer is None and self.server.idle_timeout:
            self.idle_timer = self.loop.call_at(
                self.idle_since + self.server.idle_timeout, self._idle
            )

    def _idle(self) -> None:
        self.idle_timer = None
        if self.transport is None:
            return
        timeout = self.server.idle_timeout
        since = self.idle_since
        now = self.loop.time()
        if since is not None and now - since >= timeout and not self.busy and not self.buffer:
            self.transport.close()
            return
        self.idle_timer = self.loop.call_at(
            (since if since is not None else now) + timeout, self._idle
        )

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if self.transport is not None:
            self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self.head_timer, self.idle_timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.idle_timer = self.write_timer = None

    def shut_down(self) -> None:
        if not self.busy and not self.paused and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
