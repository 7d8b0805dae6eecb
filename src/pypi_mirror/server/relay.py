"""A small HTTP/1.1 client for proxied downloads: keep-alive connections to the file host,
answers parsed by llhttp (``httptools.HttpResponseParser``), bodies handed on as they arrive.

aiohttp's client spent four times nginx's CPU on a proxied 100 KB file (request objects,
header multidicts, tracing, its stream reader); this relay does what nginx's ``proxy_pass``
does: write a request head, parse the answer's head, pass body bytes on with flow control.
It serves GET and HEAD of validated file URLs only, with no upstream proxy configured
(``upstream.proxy`` keeps everything on aiohttp, which speaks HTTP and SOCKS proxies).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

from pypi_mirror.server.http import UpstreamBroke

log = logging.getLogger(__name__)

MAX_IDLE_PER_HOST = 32
HIGH_WATER = 1024 * 1024  # body bytes waiting for the client before the upstream is paused
LOW_WATER = 256 * 1024
MAX_HEAD = 64 * 1024


class RelayError(UpstreamBroke):
    """The upstream could not be reached or answered badly; ``timeout`` for a 504. Raised
    by ``chunks()`` too, where the server sees an upstream body that broke off."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(RelayError("upstream timed out (timeouts.upstream)", timeout=True))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: RelayPool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: RelayAnswer | None = None
        self.used = False  # has carried an exchange before: a failure may be a stale socket
        self.closed = False
        self.body_left = 0  # Content-Length bytes still to come, once llhttp saw the head
        self.keep_alive = False
        self.message_begun = False  # llhttp began an answer for the current exchange
        self.interim = False  # the answer being parsed is a 1xx

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        if self.body_left:
            # A Content-Length body after its first piece: handed on as received, without
            # llhttp copying it into a new bytes object for on_body.
            if len(data) > self.body_left:  # more than announced: not to be trusted
                answer.fail(RelayError("upstream sent more than its Content-Length"))
                self.close()
                return
            self.body_left -= len(data)
            answer.push(data)
            if not self.body_left:
                self.parser = httptools.HttpResponseParser(self)  # the old one waits for more
                answer.finish(self.keep_alive)
            return
        if not answer.headers_done.done():
            answer.raw_head_bytes += len(data)  # llhttp buffers a header line it has not ended
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            answer.fail(RelayError(f"bad answer from the upstream: {error}"))
            self.close()
            return
        if answer.raw_head_bytes > MAX_HEAD and not answer.headers_done.done():
            answer.fail(RelayError("upstream answer head too large"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.body_left = 0
        self.pool.forget(self)
        answer = self.answer
        if answer is not None and not answer.complete:
            if answer.headers_done.done() and answer.close_delimited and exc is None:
                answer.finish(False)  # a body without length ends with the connection
            else:
                message = f"upstream closed the connection: {exc or 'end of stream'}"
                answer.fail(RelayError(message))
        self.answer = None

    def pause_writing(self) -> None:  # request heads are small: nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        answer = self.answer
        if answer is None or answer.complete or self.message_begun:
            # Bytes after the answer we asked for: whatever they are, this connection can no
            # longer be trusted to carry the next exchange.
            self.close()
        self.message_begun = True

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self.answer
        if answer is None or self.closed:
            return
        answer.head_bytes += len(name) + len(value)
        answer.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        answer = self.answer
        if answer is None or self.closed:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (103 Early Hints...): the real answer follows
            answer.headers.clear()
            answer.head_bytes = 0
            self.interim = True
            return
        if answer.head_bytes > MAX_HEAD:
            answer.fail(RelayError("upstream answer head too large"))
            self.close()
            return
        answer.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if answer.method != "HEAD" and "transfer-encoding" not in answer.headers:
            self.body_left = answer.content_length or 0
            answer.close_delimited = answer.content_length is None
        if not answer.headers_done.done():
            answer.headers_done.set_result(None)
        if answer.method == "HEAD":
            # No body follows, whatever Content-Length says, and llhttp cannot be told so:
            # this connection is not reused (HEAD through the proxy is rare).
            answer.finish(False)

    def on_body(self, body: bytes) -> None:
        answer = self.answer
        if answer is None or self.closed:
            return
        if self.body_left:
            self.body_left -= len(body)
        answer.push(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.message_begun = False
            return
        self.body_left = 0
        answer = self.answer
        if answer is not None and not answer.complete:
            answer.finish(self.keep_alive)

    # -- use --

    def close(self) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def released(self, reusable: bool) -> None:
        """The exchange is over: back to the pool, or closed."""
        self.answer = None
        if reusable and not self.closed and self.transport is not None:
            self.transport.resume_reading()  # paused for a slow client: the answer is whole
            self.pool.give_back(self)
        else:
            self.close()


class RelayAnswer:
    """The upstream's answer: status and headers once ``headers_done``, then body pieces."""

    def __init__(self, connection: _Connection, method: str) -> None:
        self.connection = connection
        self.method = method
        self.loop = connection.loop
        self.headers_done: asyncio.Future[None] = self.loop.create_future()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_bytes = 0  # of the header fields parsed so far
        self.raw_head_bytes = 0  # received before the head was complete
        self.close_delimited = False  # no length, not chunked: the body ends at EOF
        self.pieces: deque[bytes] = deque()
        self.waiting = 0  # bytes in ``pieces``
        self.waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.error: RelayError | None = None
        self.paused = False
        self.released = False
        self.sink: Callable[[bytes], bool] | None = None

    def direct(self, sink: Callable[[bytes], bool] | None) -> None:
        """Hand body pieces to ``sink`` as they arrive, as long as it returns True (it took
        the piece); others wait in ``chunks()``. None stops it."""
        self.sink = sink

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isascii() and value.isdigit() else None

    # -- fed by the connection --

    def push(self, piece: bytes) -> None:
        # Straight to the client while it takes bytes and nothing waits before this piece:
        # no task switch per piece.
        if self.sink is not None and not self.pieces and self.sink(piece):
            return
        self.pieces.append(piece)
        self.waiting += len(piece)
        if self.waiting > HIGH_WATER and not self.paused:
            transport = self.connection.transport
            if transport is not None:
                transport.pause_reading()
                self.paused = True
        self._wake()

    def finish(self, keep_alive: bool) -> None:
        self.complete = True
        # Reading resumes as the connection goes back (released): it is no longer ours to
        # pause or resume, whoever reads the pieces still waiting here.
        self.paused = False
        # The connection is free as soon as the upstream's answer is complete, even while
        # its last pieces still wait here for a slow client.
        self.release(reusable=keep_alive)
        self._wake()

    def fail(self, error: RelayError) -> None:
        if self.complete:
            return
        self.error = error
        self.complete = True
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
            self.headers_done.exception()  # retrieved by whoever awaits; none need to
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- read by the proxy --

    async def chunks(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The body as it arrives; raises RelayError when it breaks off or stalls."""
        while True:
            if self.pieces:
                piece = self.pieces.popleft()
                self.waiting -= len(piece)
                if self.paused and self.waiting < LOW_WATER:
                    self.paused = False
                    transport = self.connection.transport
                    if transport is not None and not self.connection.closed:
                        transport.resume_reading()
                yield piece
                continue
            if self.error is not None:
                raise self.error
            if self.complete:
                return
            waiter = self.waiter = self.loop.create_future()
            # A bare timer on the waiter: cheaper than asyncio.timeout's context per wait.
            timer = self.loop.call_later(timeout, _expire, waiter) if timeout else None
            try:
                await waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()

    def release(self, reusable: bool = False) -> None:
        """Done with the answer (read whole, or abandoned): free the connection."""
        if self.released:
            return
        self.released = True
        self.connection.released(reusable and self.complete and self.error is None)


class RelayPool:
    """Keep-alive connections per upstream host (one worker's event loop)."""

    def __init__(self, user_agent: str, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.user_agent = user_agent
        self.timeout = timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def request(self, method: str, url: str, headers: dict[str, str]) -> RelayAnswer:
        """Send ``method url`` (a URL the caller built from the configured bases) and wait for
        the answer's head. A kept-alive connection the upstream closed meanwhile is retried
        once on a new one (GET and HEAD are safe to repeat)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
        lines.append(f"User-Agent: {self.user_agent}\r\n")
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        head = ("".join(lines) + "\r\n").encode("latin-1")
        for attempt in (0, 1):
            # The retry never takes another idle connection: it may be stale just the same.
            connection = await self._connection(key, fresh=attempt > 0)
            answer = RelayAnswer(connection, method)
            connection.answer = answer
            connection.message_begun = False
            assert connection.transport is not None
            connection.transport.write(head)
            timer = self.loop.call_later(self.timeout, _expire, answer.headers_done)
            try:
                await answer.headers_done
            except RelayError as error:
                reused = connection.used
                answer.release()
                if reused and attempt == 0 and not answer.head_bytes and not error.timeout:
                    continue  # a stale keep-alive connection: once more on a new one
                raise
            except BaseException:
                answer.release()
                raise
            finally:
                timer.cancel()
            connection.used = True
            return answer
        raise RelayError("unreachable")  # the loop returns or raises

    async def _connection(self, key: tuple[str, str, int], *, fresh: bool = False) -> _Connection:
        idle = None if fresh else self._idle.get(key)
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if not connection.closed and transport is not None and not transport.is_closing():
                return connection
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.timeout):
                _transport, connection = await self.loop.create_connection(
                    lambda: _Connection(self, key),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError:
            raise RelayError(f"connecting to {host}:{port} timed out", timeout=True) from None
        except OSError as error:
            raise RelayError(f"cannot connect to {host}:{port}: {error}") from None
        return connection

    def give_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            connection.close()
            return
        idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in list(idle):
                connection.close()
        self._idle.clear()
