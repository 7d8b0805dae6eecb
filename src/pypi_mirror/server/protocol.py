"""The one HTTP/1.1 request path: every byte a client sends is parsed by llhttp (through
``httptools``, as uvicorn does), every answer is written here.

Why not aiohttp's server: its request machinery (parser, request and response objects, one
task per request) cost more CPU than everything our handlers do for a small answer, and a
hand-written fast path in front of it meant two parsers that could disagree — a
request-smuggling primitive. llhttp is strict (bare CR or LF, obs-fold, NUL, CL with TE, two
Content-Lengths: all errors) and is the only parser here, for plain HTTP and TLS alike.

A handler answers most requests synchronously (local pages and files, 304, 206, 302, 404):
the answer is written from ``data_received`` with no task at all. Handlers that must wait
(on-demand page fetches, the upstream) return a coroutine, run as one task per request.
Requests are answered in order; pipelined ones wait in ``_queue``.

Limits: the request target up to MAX_TARGET bytes (414), a head up to MAX_HEAD bytes and
MAX_HEADERS fields (431), a body up to MAX_BODY (413), a head within ``timeouts.read`` of its
first byte (408), an idle keep-alive connection up to ``timeouts.idle``, and a client that
stops reading is cut after ``timeouts.write``. Every answered request gets one access-log
line; a client that leaves mid-answer gets one DEBUG line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import httptools

from pypi_mirror.server.http import (
    FileBody,
    Request,
    Response,
    StreamBody,
    UpstreamBroke,
    date_and_server,
    status_line,
    text,
)

log = logging.getLogger(__name__)

MAX_TARGET = 8 * 1024
MAX_HEADERS = 100
MAX_FIELD = 8 * 1024  # one header line, as nginx's large_client_header_buffers
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024  # our endpoints take no body beyond a small XML-RPC call
LINGER = 2.0  # seconds a connection reads and drops after a bad head
MAX_PIPELINED = 32  # requests parsed ahead of their answers before reading pauses

Answer = Response | Coroutine[Any, Any, Response]
Handler = Callable[[Request], Answer]
AccessLog = Callable[[Request, int, int], None]


class _Reject(Exception):
    """A request head breaks one of our limits: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientGone(ConnectionError):
    """The client closed, reset or stopped reading: nothing more can be sent."""


class ServerContext:
    """What every connection of a worker shares, and the set of open connections."""

    def __init__(
        self,
        handler: Handler,
        access_log: AccessLog,
        *,
        read_timeout: float,
        idle_timeout: float,
        write_timeout: float,
    ) -> None:
        self.handler = handler
        self.access_log = access_log
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.connections: set[HttpProtocol] = set()
        self.closing = False

    def __call__(self) -> HttpProtocol:
        return HttpProtocol(self)

    def close_idle(self) -> None:
        """Shutdown: idle connections close now, busy ones after their current answer."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()

    async def wait_closed(self, timeout: float) -> None:
        """Until every connection is gone; after ``timeout`` the rest are cut."""
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.abort_all()

    def abort_all(self) -> None:
        for connection in list(self.connections):
            connection.abort()


class HttpProtocol(asyncio.Protocol):
    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.sock_fd = -1  # plain TCP only: sendfile(2) goes straight to this socket
        self.own: socket.socket | None = None  # see _own_socket
        self.remote: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.request: Request | None = None  # the one being parsed
        self.head_bytes = 0
        self.head_size = 0
        self.in_head = False
        self.body_bytes = 0
        self.queue: deque[Request] = deque()
        self.error: _Reject | None = None  # answered once the queue before it is
        self.upgrade = False  # llhttp stopped at an Upgrade/CONNECT: close after the queue
        self.busy = False  # an answer is being written by a task
        self.task: asyncio.Task[None] | None = None
        self.paused = False  # the transport's buffer is full
        self.drained: asyncio.Future[None] | None = None
        self.write_timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.eof = False
        self.error_answered = False
        self.direct_sent = 0  # bytes of the current streamed body written by its source
        self.lingering: asyncio.TimerHandle | None = None
        # One timer per connection, re-armed lazily: ``deadline`` moves, the timer follows.
        self.deadline = 0.0
        self.waiting_for = ""  # "idle" (between requests), "head" (inside one) or ""
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (tuple, list)) and peer else None
        if transport.get_extra_info("sslcontext") is None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                self.sock_fd = sock.fileno()
        self.context.connections.add(self)
        if self.context.closing:
            transport.close()
            return
        self._wait("idle")

    def data_received(self, data: bytes) -> None:
        if self.error is not None or self.upgrade:
            return  # after a bad head nothing more is parsed: the connection is closing
        if self.waiting_for == "idle":
            self._wait("head")
        if self.in_head:
            # llhttp keeps a partial header line in memory: bound what one head may send.
            # (on_message_begin restarts the count: pipelined heads in one read are fine.)
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self.in_head and self.head_bytes > MAX_HEAD + MAX_TARGET:
                raise _Reject(431, "request head too large")
        except _Reject as error:
            self._fail(error)
        except httptools.HttpParserUpgrade:
            # The request is complete; we speak no other protocol: answer it, then close.
            self.upgrade = True
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            self._fail(cause if isinstance(cause, _Reject) else _Reject(400, "bad request"))
        except httptools.HttpParserError as error:
            self._fail(_Reject(400, f"bad request: {error}"))
        self._next()

    def eof_received(self) -> bool:
        # A half-closed client may still read the answers to what it sent; then we close.
        self.eof = True
        return (bool(self.queue) or self.busy) and self.error is None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.context.connections.discard(self)
        if self.own is not None:
            self.own.close()  # our duplicate descriptor only; the transport closes its own
            self.own = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for timer in (self.write_timer, self.lingering):
            if timer is not None:
                timer.cancel()
        self.write_timer = self.lingering = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ClientGone("connection lost"))
            self.drained.exception()  # retrieved: whoever waits sees it; nobody must
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.transport = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.paused = True
        if self.write_timer is None and self.context.write_timeout:
            self.write_timer = self.loop.call_later(self.context.write_timeout, self._too_slow)

    def resume_writing(self) -> None:
        self.paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if not self.busy and self.transport is not None:
            self._next()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = Request(self.remote)
        self.request.started = time.monotonic()
        self.in_head = True
        self.head_bytes = 0
        self.head_size = 0
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        request = self.request
        assert request is not None
        if len(request.target) + len(url) > MAX_TARGET:
            raise _Reject(414, "request target too long")
        request.target += url.decode("ascii")  # llhttp lets only visible ASCII through

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.request
        assert request is not None
        headers = request.headers
        field = len(name) + len(value) + 4
        self.head_size += field
        if len(headers) >= MAX_HEADERS or self.head_size > MAX_HEAD or field > MAX_FIELD:
            raise _Reject(431, "request header fields too large")
        key = name.lower()
        previous = headers.get(key)
        headers[key] = value if previous is None else previous + b", " + value

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        parser = self.parser
        self.in_head = False
        self.head_bytes = 0
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Reject(400, f"HTTP/{version} is not spoken here: HTTP/1.1 or 1.0")
        request.version = version
        request.method = parser.get_method().decode("ascii")
        request.keep_alive = parser.should_keep_alive()
        target = request.target
        if not target.startswith("/") and target.startswith(("http://", "https://")):
            # absolute-form (RFC 9112 3.2.2): the path is ours, the authority is not used
            rest = target.split("://", 1)[1]
            slash = rest.find("/")
            target = rest[slash:] if slash >= 0 else "/"
        path, _, request.query = target.partition("?")
        request.path = path
        if self.waiting_for == "head":
            self.waiting_for = ""

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY:
            raise _Reject(413, "request body too large")
        request = self.request
        if request is not None and request.method == "POST":  # others' bodies are dropped
            request.body += body

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        self.request = None
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True

    # -- answering, in order ---------------------------------------------------------------

    def _fail(self, error: _Reject) -> None:
        """The head is bad: no more reading; its answer comes after the queue's."""
        self.error = error
        if self.transport is not None:
            self.transport.pause_reading()

    def _next(self) -> None:
        """Answer queued requests until one needs a task, the queue is empty or writing must
        wait; then the bad head's answer, or the wait for the next request. A loop, not
        recursion: one read may hold thousands of pipelined requests."""
        while not self.busy and not self.paused:
            if self.transport is None or self.transport.is_closing():
                return
            if self.queue:
                request = self.queue.popleft()
                self._handle(request)
                if not self.busy and not request.keep_alive:
                    self._close()
                    return
                continue
            if self.error is not None:
                self._answer_error(self.error)
                return
            if self.upgrade or self.eof or self.context.closing:
                self._close()
                return
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            if self.request is not None:  # part of the next head is here
                if self.waiting_for != "head":
                    self._wait("head")
            else:
                self._wait("idle")
            return

    def _handle(self, request: Request) -> None:
        try:
            answer = self.context.handler(request)
        except Exception:
            log.exception("handling %s %s failed", request.method, request.target)
            answer = text(500, "internal error")
        if isinstance(answer, Response):
            try:
                self._write(request, answer)
            except Exception:
                log.exception("answering %s %s failed", request.method, request.target)
                answer.release()
                self.abort()
        else:
            self.busy = True
            self.task = self.loop.create_task(self._answer_later(request, answer))

    async def _answer_later(self, request: Request, pending: Coroutine[Any, Any, Response]) -> None:
        try:
            response = await pending
        except (asyncio.CancelledError, ClientGone):
            self.task = None
            self._log(request, 499, 0)  # the client left before any answer (nginx's 499)
            self.abort()
            return
        except Exception:
            log.exception("handling %s %s failed", request.method, request.target)
            response = text(500, "internal error")
        if self.transport is None:
            self.task = None
            response.release()
            self._log(request, 499, 0)
            return
        await self._finish(request, self._write_all(request, response))

    async def _write_all(self, request: Request, response: Response) -> None:
        """A whole answer from a task: the head, then the body of any kind."""
        self._write(request, response, in_task=True)
        if response.file is not None:
            await self._send_file(request, response.status, response.file)
        elif response.stream is not None:
            await self._send_stream(request, response.status, response.stream)

    def _write(self, request: Request, response: Response, *, in_task: bool = False) -> None:
        """Headers, and the body when it is in memory. A file or stream body is sent by
        ``_send_file``/``_send_stream``: by the caller when ``in_task``; else right here when
        the socket takes it all, or by a task that marks the connection busy."""
        transport = self.transport
        assert transport is not None
        status = response.status
        length = response.length if response.announced is None else response.announced
        head_only = request.method == "HEAD" or status in (204, 304) or status < 200
        keep_alive = request.keep_alive and not self.context.closing
        if length is None and not head_only:
            keep_alive = False  # a body of unknown length ends when the connection does
        request.keep_alive = keep_alive
        lines = [status_line(request.version, status)]
        lines.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        if status != 304 and length is not None and status not in (204,) and status >= 200:
            lines.append(f"Content-Length: {length}\r\n")
        lines.append(date_and_server())
        if request.version == "1.0":
            if keep_alive:
                lines.append("Connection: keep-alive\r\n")
        elif not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if head_only:
            response.release()
            transport.write(head)
            self._log(request, status, 0)
            return
        if response.file is not None:
            self._write_head_before_file(head)
            if not in_task:
                body = response.file
                sent = self._sendfile_now(body)
                if sent == body.count:
                    body.close()
                    self._log(request, status, sent)
                    return
                body.offset += sent
                body.count -= sent
                self.busy = True
                self.task = self.loop.create_task(
                    self._finish(request, self._send_file(request, status, body, already=sent))
                )
            return
        if response.stream is not None:
            transport.write(head)
            if not in_task:
                self.busy = True
                self.task = self.loop.create_task(
                    self._finish(request, self._send_stream(request, status, response.stream))
                )
            return
        transport.write(head + response.body)
        self._log(request, status, len(response.body))

    def _after(self, request: Request) -> None:
        """A task finished its answer: the next request, or close."""
        if self.transport is None:
            return
        if not request.keep_alive:
            self._close()
            return
        self._next()

    # -- file bodies -----------------------------------------------------------------------

    def _own_socket(self) -> socket.socket | None:
        """A socket object on a duplicate of the connection's descriptor, made once per
        connection: neither loop lends out its own (asyncio's has no send(), uvloop's none at
        all, and uvloop refuses a writer on the transport's descriptor)."""
        if self.own is None and self.sock_fd >= 0:
            self.own = socket.socket(fileno=os.dup(self.sock_fd))
        return self.own

    def _write_head_before_file(self, head: bytes) -> None:
        """The head with MSG_MORE when nothing waits in the transport: it leaves in one packet
        with the file's first bytes (nginx's tcp_nopush), with no TCP_CORK toggles."""
        transport = self.transport
        assert transport is not None
        own = self._own_socket()
        if own is not None and transport.get_write_buffer_size() == 0:
            try:
                head = head[own.send(head, socket.MSG_MORE) :]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                transport.abort()
                return
        if head:
            transport.write(head)

    def _sendfile_now(self, body: FileBody) -> int:
        """As much of the file as the socket takes right now (0 under TLS or when the
        transport still holds bytes: those must leave first)."""
        transport = self.transport
        if self.sock_fd < 0 or transport is None or transport.get_write_buffer_size():
            return 0
        try:
            return os.sendfile(self.sock_fd, body.fd, body.offset, body.count)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # reset, or a file sendfile cannot read: the slow path decides
            return 0

    async def _finish(self, request: Request, sending: Coroutine[Any, Any, object]) -> None:
        """Await the sending of an answer (the rest of a body a synchronous answer started, or
        a task's whole answer), then the next request. The sender logs the request, also when
        the client leaves; a bug cuts this connection only."""
        try:
            await sending
        except (asyncio.CancelledError, ClientGone):
            self.abort()  # logged by the sender
            return
        except Exception:
            log.exception("answering %s %s failed", request.method, request.target)
            self.abort()
            return
        finally:
            self.task = None
        self.busy = False
        self._after(request)

    async def _send_file(
        self, request: Request, status: int, body: FileBody, already: int = 0
    ) -> int:
        """The rest of a file body: sendfile(2) each time the socket can take more (plain
        TCP), else read and write with flow control (TLS). Logs the request with the bytes
        that really left, also when the client goes away."""
        start = body.offset - already
        try:
            if self.sock_fd >= 0:
                await self._drain()
                await self._pump(body)
            else:
                while body.count:
                    chunk = os.pread(body.fd, min(body.count, 256 * 1024), body.offset)
                    if not chunk:
                        raise ClientGone("file ended early")
                    await self._send_bytes(chunk)
                    body.offset += len(chunk)
                    body.count -= len(chunk)
        except (ClientGone, asyncio.CancelledError):
            sent = body.offset - start
            log.debug("client %s left %s after %d bytes", self.remote, request.target, sent)
            self._log(request, status, sent)
            raise
        finally:
            body.close()
        sent = body.offset - start
        self._log(request, status, sent)
        return sent

    async def _pump(self, body: FileBody) -> None:
        """sendfile(2) whenever the socket is writable, until the body is out; cut when the
        client takes nothing for ``timeouts.write`` (a slow reader that keeps reading is
        served). The transport holds nothing and writes nothing meanwhile (this connection
        is busy), so the socket is ours alone; the writer stays registered throughout
        (``loop.sendfile`` re-registers between every two calls)."""
        loop = self.loop
        sock_fd = self.sock_fd
        done: asyncio.Future[None] = loop.create_future()
        timeout = self.context.write_timeout
        last_progress = loop.time()

        def ready() -> None:
            nonlocal last_progress
            try:
                while body.count:
                    written = os.sendfile(sock_fd, body.fd, body.offset, body.count)
                    if written == 0:
                        raise ClientGone("file ended early")
                    body.offset += written
                    body.count -= written
                    last_progress = loop.time()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if not done.done():
                    done.set_exception(ClientGone(str(error)))
                return
            if not done.done():
                done.set_result(None)

        def watch() -> None:
            nonlocal watchdog
            if done.done():
                return
            idle_until = last_progress + timeout
            if loop.time() >= idle_until:
                done.set_exception(ClientGone("client stopped reading (timeouts.write)"))
            else:
                watchdog = loop.call_at(idle_until, watch)

        watchdog = loop.call_at(last_progress + timeout, watch) if timeout else None
        # Watched through our duplicate descriptor (see _own_socket).
        own = self._own_socket()
        assert own is not None
        watched = own.fileno()
        try:
            loop.add_writer(watched, ready)
            try:
                await done
            finally:
                loop.remove_writer(watched)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    # -- streamed bodies -------------------------------------------------------------------

    async def _send_stream(self, request: Request, status: int, body: StreamBody) -> None:
        self.direct_sent = 0
        if body.direct is not None:
            body.direct(self._take_directly)
        sent = 0
        try:
            async for chunk in body.chunks:
                await self._send_bytes(chunk)
                sent += len(chunk)
        except (ClientGone, asyncio.CancelledError):
            sent += self.direct_sent
            log.debug("client %s left %s after %d bytes", self.remote, request.target, sent)
            self._log(request, status, sent)
            raise
        except UpstreamBroke as error:
            sent += self.direct_sent
            # Headers are out: cutting the connection is the only honest signal left.
            log.warning(
                "upstream body for %s broke off after %d bytes: %s", request.target, sent, error
            )
            self._log(request, status, sent)
            raise ClientGone("upstream broke off") from None
        finally:
            if body.direct is not None:
                body.direct(None)
            body.close()
        sent += self.direct_sent
        if body.length is not None and sent != body.length:
            log.warning(
                "upstream body for %s ended after %d of %d bytes", request.target, sent, body.length
            )
            self._log(request, status, sent)
            raise ClientGone("upstream body shorter than announced")
        self._log(request, status, sent)

    def _take_directly(self, piece: bytes) -> bool:
        """A stream source's piece, written at once unless the client is behind (then the
        source keeps it for ``_send_stream``, which waits for the client)."""
        transport = self.transport
        if self.paused or transport is None or transport.is_closing():
            return False
        transport.write(piece)
        self.direct_sent += len(piece)
        return True

    async def _send_bytes(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientGone("connection closed")
        transport.write(data)
        while self.paused:  # above the transport's high-water mark: wait for its low one
            self.drained = self.loop.create_future()
            try:
                await self.drained
            finally:
                self.drained = None

    async def _drain(self) -> None:
        """Until the transport's buffer is empty (paused writing is bounded by
        ``timeouts.write``)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientGone("connection closed")
        if not self.paused:
            if transport.get_write_buffer_size() == 0:
                return
            # Below its high-water mark a transport never says when it drained: with the
            # mark at zero it pauses us now and resumes us when the last byte has left.
            transport.set_write_buffer_limits(high=0)
        try:
            while self.paused:
                self.drained = self.loop.create_future()
                await self.drained
        finally:
            self.drained = None
            if self.transport is not None:
                self.transport.set_write_buffer_limits()

    # -- errors, timers, closing -----------------------------------------------------------

    def _answer_error(self, error: _Reject) -> None:
        if self.error_answered:
            return
        self.error_answered = True
        request = self.request or Request(self.remote)
        if not request.method:
            request.method = "-"
        self.request = None
        request.keep_alive = False
        if request.version not in ("1.0", "1.1"):
            request.version = "1.1"
        log.debug("client %s: %d %s", self.remote, error.status, error.reason)
        self._write(request, text(error.status, error.reason), in_task=True)
        # Lingering close, as nginx: stop sending, read and drop what the client still sends
        # for a moment, so our close does not reset the connection before it read the answer.
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof() and not self.eof:
            transport.write_eof()
            transport.resume_reading()
            self.lingering = self.loop.call_later(LINGER, self._close)
        else:
            self._close()

    def _wait(self, kind: str) -> None:
        """Start waiting for the next request ("idle") or the rest of its head ("head")."""
        self.waiting_for = kind
        timeout = self.context.idle_timeout if kind == "idle" else self.context.read_timeout
        if not timeout:
            return
        self.deadline = self.loop.time() + timeout
        if self.timer is not None and self.timer.when() > self.deadline:
            self.timer.cancel()  # a sooner deadline (read after idle): re-arm
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.transport is None or not self.waiting_for:
            return
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._tick)
            return
        if self.waiting_for == "head" and (self.request is not None or self.head_bytes):
            self.parser = httptools.HttpRequestParser(self)  # nothing more is parsed
            self.error = _Reject(408, "request head not complete within timeouts.read")
            self._next()
            return
        self._close()

    def _too_slow(self) -> None:
        self.write_timer = None
        log.debug("client %s stopped reading: cut after timeouts.write", self.remote)
        self.abort()

    def _log(self, request: Request, status: int, size: int) -> None:
        self.context.access_log(request, status, size)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue and self.request is None:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


__all__ = [
    "Answer",
    "ClientGone",
    "FileBody",
    "HttpProtocol",
    "ServerContext",
    "StreamBody",
    "UpstreamBroke",
]
