"""The proxied-download relay (server/relay.py) against a scripted upstream on 127.0.0.1.

Each test scripts an upstream with asyncio streams, byte for byte, and drives ``RelayPool`` in
the same event loop: framing (Content-Length, chunked, HEAD), keep-alive reuse, the one retry
of a stale kept-alive connection, breaks and stalls, malformed and oversize answer heads, flow
control. The last tests run the real ``pypi-mirror serve`` in proxy mode against the fake
PyPI through a TCP forwarder that counts the upstream connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.client import IncompleteRead
from pathlib import Path

import pytest
import uvloop

from pypi_mirror.server.relay import HIGH_WATER, RelayAnswer, RelayError, RelayPool
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, free_port, http

UA = "relay-test/1.0"
POOL_TIMEOUT = 3.0  # seconds for a connection and an answer head in most tests
QUICK = 2.0  # a failure that must not wait for the pool timeout comes before this
# Bytes buffered in an answer beyond HIGH_WATER: one socket read (256 KiB for asyncio and
# uvloop) plus slack; without flow control a fast upstream piles up tens of megabytes.
READ_SLACK = 1024 * 1024


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + size).randbytes(size)


def digest(data: bytes) -> tuple[int, str]:
    """Compared instead of the bytes, so that a mismatch does not print megabytes."""
    return len(data), hashlib.sha256(data).hexdigest()[:16]


def answer_head(length: int | None, status: str = "200 OK", extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status}\r\n{framing}{extra}\r\n".encode("latin-1")


def chunked(pieces: list[bytes], trailer: str = "") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return out + b"0\r\n" + trailer.encode() + b"\r\n"


# -- a scripted upstream -----------------------------------------------------------------------


@dataclass
class Received:
    """One request head as the upstream read it."""

    raw: bytes
    connection: int  # index of the upstream connection (accept order)

    @property
    def request_line(self) -> str:
        return self.raw.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def method(self) -> str:
        return self.request_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.request_line.split(" ")[1]

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.raw.decode("latin-1").split("\r\n")[1:]
        assert lines[-2:] == ["", ""], self.raw  # the head ends in exactly one blank line
        pairs = []
        for line in lines[:-2]:
            name, sep, value = line.partition(":")
            assert sep and name == name.strip(), line
            pairs.append((name.lower(), value.strip()))
        return pairs


@dataclass
class Conn:
    """One accepted upstream connection, handed to the test's script."""

    upstream: Upstream
    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> Received | None:
        """The next request head, or None once the relay closed the connection."""
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.upstream.eofs.append(self.index)
            self.upstream.eof.set()
            return None
        received = Received(raw, self.index)
        self.upstream.received.append(received)
        return received

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_closed_by_relay(self) -> None:
        """Hold the connection open (not answering) until the relay closes it."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.upstream.eofs.append(self.index)
        self.upstream.eof.set()


Script = Callable[[Conn], Awaitable[None]]


@dataclass
class Upstream:
    script: Script
    accepts: int = 0
    received: list[Received] = field(default_factory=list)
    eofs: list[int] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def url(self, path: str = "/files/demo-1.0.tar.gz") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        conn = Conn(self, self.accepts, reader, writer)
        self.accepts += 1
        try:
            await self.script(conn)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def serving(bodies: dict[str, bytes], extra: str = "") -> Script:
    """A well-behaved keep-alive upstream: each path's body with its Content-Length."""

    async def script(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            body = bodies[request.target]
            head = answer_head(len(body), extra=extra)
            await conn.send(head if request.method == "HEAD" else head + body)

    return script


@pytest.fixture
async def pool() -> AsyncIterator[RelayPool]:
    relay = RelayPool(UA, POOL_TIMEOUT)
    yield relay
    relay.close()


async def read_all(answer: RelayAnswer, timeout: float = 5.0) -> bytes:
    data = bytearray()
    try:
        async with asyncio.timeout(timeout + 5):
            async for piece in answer.chunks(timeout):
                data += piece
    finally:
        answer.release()
    return bytes(data)


async def fetch(pool: RelayPool, url: str, method: str = "GET") -> tuple[RelayAnswer, bytes]:
    async with asyncio.timeout(10):
        answer = await pool.request(method, url, {})
    return answer, await read_all(answer)


# -- 1. Content-Length bodies and the request head ---------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100 * 1024, 5 * 1024 * 1024])
async def test_content_length_body_arrives_exact(pool: RelayPool, size: int) -> None:
    body = blob(size)

    async def script(conn: Conn) -> None:
        while await conn.request() is not None:
            extra = "Content-Type: application/octet-stream\r\nX-PyPI-Last-Serial: 7\r\n"
            await conn.send(answer_head(size, extra=extra) + body)

    async with Upstream(script) as upstream:
        url = upstream.url("/files/ab/demo-1.0.tar.gz?x=1")
        headers = {"Range": "bytes=0-", "Accept-Encoding": "identity"}
        answer = await pool.request("GET", url, headers)
        assert answer.status == 200
        assert answer.content_length == size
        assert answer.headers["content-type"] == "application/octet-stream"
        assert answer.headers["x-pypi-last-serial"] == "7"
        assert all(name == name.lower() for name in answer.headers)
        assert digest(await read_all(answer)) == digest(body)
        [received] = upstream.received
        assert received.request_line == "GET /files/ab/demo-1.0.tar.gz?x=1 HTTP/1.1"
        assert sorted(received.headers) == sorted(
            [
                ("host", f"127.0.0.1:{upstream.port}"),
                ("user-agent", UA),
                ("range", "bytes=0-"),
                ("accept-encoding", "identity"),
            ]
        )


# -- 2. keep-alive ---------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(pool: RelayPool) -> None:
    bodies = {"/a": blob(10), "/b": blob(200_000), "/c": b""}
    async with Upstream(serving(bodies)) as upstream:
        for path in ("/a", "/b", "/c", "/a"):
            _answer, body = await fetch(pool, upstream.url(path))
            assert digest(body) == digest(bodies[path])
        assert upstream.accepts == 1
        assert [r.target for r in upstream.received] == ["/a", "/b", "/c", "/a"]


async def test_connection_close_answer_is_not_reused(pool: RelayPool) -> None:
    """``Connection: close`` (the socket left open): the next request goes elsewhere."""

    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(answer_head(5, extra="Connection: close\r\n") + b"first")
        if await conn.request() is not None:  # the relay should never ask here again
            await conn.send(answer_head(5) + b"WRONG")
            await conn.wait_closed_by_relay()

    async with Upstream(script) as upstream:
        assert (await fetch(pool, upstream.url()))[1] == b"first"
        assert (await fetch(pool, upstream.url()))[1] == b"first"
        assert upstream.accepts == 2
        assert [r.connection for r in upstream.received] == [0, 1]  # never asked again on 0


async def test_abandoned_answer_is_not_reused(pool: RelayPool) -> None:
    """An answer released before its body ended leaves body bytes on the wire."""
    size = 4 * 1024 * 1024

    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        if conn.index == 0:
            await conn.send(answer_head(size) + blob(size)[:100_000])
            await conn.wait_closed_by_relay()  # the rest never comes
        else:
            await conn.send(answer_head(3) + b"new")
            await conn.wait_closed_by_relay()

    async with Upstream(script) as upstream:
        answer = await pool.request("GET", upstream.url(), {})
        async for _piece in answer.chunks(5):
            break
        answer.release()
        assert (await fetch(pool, upstream.url()))[1] == b"new"
        assert upstream.accepts == 2
        async with asyncio.timeout(QUICK):
            await upstream.eof.wait()  # the abandoned connection was closed
        assert 0 in upstream.eofs


# -- 3. a stale kept-alive connection is retried once -----------------------------------------


async def test_connection_closed_after_answer_is_replaced(pool: RelayPool) -> None:
    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(answer_head(2) + b"ok")  # then closes: keep-alive timeout of 0

    async with Upstream(script) as upstream:
        for _ in range(3):
            assert (await fetch(pool, upstream.url()))[1] == b"ok"
        assert upstream.accepts == 3


async def test_stale_connection_retried_on_a_new_one(pool: RelayPool) -> None:
    """The upstream closes the kept-alive connection just as the next request arrives."""

    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(answer_head(2) + b"ok")
        if conn.index == 0:
            await conn.request()  # read the second request and hang up without a word
            return
        while await conn.request() is not None:
            await conn.send(answer_head(2) + b"ok")

    async with Upstream(script) as upstream:
        assert (await fetch(pool, upstream.url()))[1] == b"ok"
        assert (await fetch(pool, upstream.url()))[1] == b"ok"
        assert upstream.accepts == 2
        assert [r.connection for r in upstream.received] == [0, 0, 1]


async def test_stale_retry_uses_a_new_connection_not_another_idle_one(pool: RelayPool) -> None:
    """Two idle connections go stale at once (an upstream restart, a keep-alive timeout):
    the one retry must not land on the other stale connection."""
    both_accepted = asyncio.Event()
    accepted = 0

    async def script(conn: Conn) -> None:
        nonlocal accepted
        if conn.index < 2:
            accepted += 1
            if accepted == 2:
                both_accepted.set()
            assert await conn.request() is not None
            await both_accepted.wait()  # both requests in flight: two connections
            await conn.send(answer_head(2) + b"ok")
            await conn.request()  # stale: read the next request, hang up
            return
        while await conn.request() is not None:
            await conn.send(answer_head(2) + b"ok")

    async with Upstream(script) as upstream:
        first = await asyncio.gather(fetch(pool, upstream.url()), fetch(pool, upstream.url()))
        assert [body for _answer, body in first] == [b"ok", b"ok"]
        assert upstream.accepts == 2  # precondition: two idle connections in the pool
        assert (await fetch(pool, upstream.url()))[1] == b"ok"


# -- 4. an upstream that hangs up before answering ---------------------------------------------


async def test_upstream_closing_before_answer_is_an_error(pool: RelayPool) -> None:
    async def script(conn: Conn) -> None:
        await conn.request()  # and close

    async with Upstream(script) as upstream:
        started = time.monotonic()
        with pytest.raises(RelayError) as caught:
            await fetch(pool, upstream.url())
        assert not caught.value.timeout
        assert time.monotonic() - started < QUICK
        assert 1 <= upstream.accepts <= 2


async def test_failing_reused_connection_is_retried_exactly_once(pool: RelayPool) -> None:
    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        if conn.index == 0:
            await conn.send(answer_head(2) + b"ok")
            await conn.request()
        # every later request, and every later connection: hung up on

    async with Upstream(script) as upstream:
        assert (await fetch(pool, upstream.url()))[1] == b"ok"
        started = time.monotonic()
        with pytest.raises(RelayError) as caught:
            await fetch(pool, upstream.url())
        assert not caught.value.timeout
        assert time.monotonic() - started < QUICK
        assert upstream.accepts == 2  # the reused one, then exactly one new one
        assert len(upstream.received) == 3


# -- 5. chunked answers ------------------------------------------------------------------------


async def test_chunked_answer_is_decoded(pool: RelayPool) -> None:
    pieces = [blob(1, 1), blob(5000, 2), blob(300_000, 3), blob(17, 4)]
    whole = b"".join(pieces)

    async def script(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(answer_head(None, extra="Transfer-Encoding: chunked\r\n"))
            encoded = chunked(pieces[:2])[:-5]  # without the last chunk
            encoded += b"%x;ext=1\r\n%s\r\n" % (len(pieces[2]), pieces[2])
            encoded += chunked(pieces[3:], trailer="X-Trailer: t\r\n")
            for start in range(0, len(encoded), 70_000):  # pieces cut mid-chunk
                await conn.send(encoded[start : start + 70_000])
                await asyncio.sleep(0.005)

    async with Upstream(script) as upstream:
        for _ in range(2):
            answer, body = await fetch(pool, upstream.url())
            assert answer.status == 200
            assert answer.content_length is None
            assert digest(body) == digest(whole)
        assert upstream.accepts == 1  # a complete chunked answer leaves a reusable connection


# -- 6. a body that breaks off -----------------------------------------------------------------


async def test_body_breaking_off_raises_and_connection_is_dropped(pool: RelayPool) -> None:
    size = 100_000
    body = blob(size)

    async def script(conn: Conn) -> None:
        while await conn.request() is not None:
            if conn.index == 0:
                await conn.send(answer_head(size) + body[: size // 2])
                return  # hang up mid-body
            await conn.send(answer_head(size) + body)

    async with Upstream(script) as upstream:
        answer = await pool.request("GET", upstream.url(), {})
        got = bytearray()
        with pytest.raises(RelayError) as caught:
            async with asyncio.timeout(10):
                async for piece in answer.chunks(5):
                    got += piece
        answer.release()
        assert not caught.value.timeout
        assert len(got) <= size // 2 and bytes(got) == body[: len(got)]
        assert digest((await fetch(pool, upstream.url()))[1]) == digest(body)
        assert upstream.accepts == 2


# -- 7. stalls ---------------------------------------------------------------------------------


async def test_body_stall_times_out_and_connection_is_dropped(pool: RelayPool) -> None:
    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        if conn.index == 0:
            await conn.send(answer_head(1000) + b"x" * 10)
            await conn.wait_closed_by_relay()  # and nothing more
        else:
            await conn.send(answer_head(2) + b"ok")
            await conn.wait_closed_by_relay()

    async with Upstream(script) as upstream:
        answer = await pool.request("GET", upstream.url(), {})
        started = time.monotonic()
        with pytest.raises(RelayError) as caught:
            async with asyncio.timeout(10):
                async for _piece in answer.chunks(0.5):
                    pass
        elapsed = time.monotonic() - started
        answer.release()
        assert caught.value.timeout
        assert 0.4 < elapsed < QUICK
        assert (await fetch(pool, upstream.url()))[1] == b"ok"
        assert upstream.accepts == 2
        assert 0 in upstream.eofs


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Len"], ids=["none", "part"])
async def test_no_answer_head_within_pool_timeout(sent: bytes) -> None:
    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(sent)
        await conn.wait_closed_by_relay()

    relay = RelayPool(UA, 0.5)
    try:
        async with Upstream(script) as upstream:
            started = time.monotonic()
            with pytest.raises(RelayError) as caught:
                async with asyncio.timeout(10):
                    await relay.request("GET", upstream.url(), {})
            assert caught.value.timeout
            assert 0.4 < time.monotonic() - started < QUICK
            async with asyncio.timeout(QUICK):
                await upstream.eof.wait()  # the connection was given up
    finally:
        relay.close()


# -- 8. HEAD -----------------------------------------------------------------------------------


async def test_head_answer_has_no_body_and_next_get_works(pool: RelayPool) -> None:
    body = blob(1000)
    async with Upstream(serving({"/f": body})) as upstream:
        async with asyncio.timeout(QUICK):
            answer = await pool.request("HEAD", upstream.url("/f"), {})
            assert answer.status == 200
            assert answer.content_length == 1000
            assert await read_all(answer) == b""
        assert upstream.received[0].request_line == "HEAD /f HTTP/1.1"
        async with asyncio.timeout(QUICK):
            _answer, got = await fetch(pool, upstream.url("/f"))
        assert digest(got) == digest(body)
        assert upstream.received[-1].request_line == "GET /f HTTP/1.1"


# -- 9. flow control ---------------------------------------------------------------------------


async def send_big(conn: Conn, size: int, progress: list[int] | None = None) -> None:
    await conn.send(answer_head(size))
    piece = blob(1024 * 1024, 9)
    sent = 0
    while sent < size:
        part = piece[: size - sent]
        await conn.send(part)
        sent += len(part)
        if progress is not None:
            progress[0] = sent


async def test_slow_reader_pauses_the_upstream(pool: RelayPool) -> None:
    size = 50 * 1024 * 1024
    sent = [0]

    async def script(conn: Conn) -> None:
        while await conn.request() is not None:
            await send_big(conn, size, sent)

    async with Upstream(script) as upstream:
        answer = await pool.request("GET", upstream.url(), {})
        expected = hashlib.sha256()
        for _ in range(size // (1024 * 1024)):
            expected.update(blob(1024 * 1024, 9))
        got = hashlib.sha256()
        received = most_waiting = most_ahead = 0
        async with asyncio.timeout(30):
            async for piece in answer.chunks(5):
                got.update(piece)
                received += len(piece)
                most_waiting = max(most_waiting, answer.waiting)
                most_ahead = max(most_ahead, sent[0] - received)
                await asyncio.sleep(0.001)
        answer.release()
        assert received == size and got.hexdigest() == expected.hexdigest()
        assert most_waiting <= HIGH_WATER + READ_SLACK, most_waiting
        # What the upstream wrote but the reader has not had: the relay's buffer plus the
        # kernel's socket buffers; without a pause it would be most of the 50 MB.
        assert most_ahead < 16 * 1024 * 1024, most_ahead


async def test_finished_paused_answer_does_not_unpause_the_next_exchange(
    pool: RelayPool,
) -> None:
    """An answer that completes in the very read that crossed HIGH_WATER goes back to the pool
    while its reader is still behind; when that reader catches up, it must not resume reading
    for the next exchange on the same connection, which is paused for its own reader."""
    first_size = HIGH_WATER + 1
    second_size = 24 * 1024 * 1024

    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(answer_head(first_size) + b"a" * HIGH_WATER)
        await asyncio.sleep(0.3)  # all of it read: exactly HIGH_WATER waiting, not above
        await conn.send(b"a")  # crosses HIGH_WATER and completes the answer
        while await conn.request() is not None:
            await send_big(conn, second_size)

    async with Upstream(script) as upstream:
        first = await pool.request("GET", upstream.url(), {})
        await asyncio.sleep(0.6)  # the first answer is complete, its bytes unread
        second = await pool.request("GET", upstream.url(), {})
        assert upstream.accepts == 1  # precondition: the connection was reused
        await asyncio.sleep(0.3)  # the second answer fills up and pauses
        assert second.waiting <= HIGH_WATER + READ_SLACK
        assert len(await read_all(first)) == first_size
        await asyncio.sleep(0.5)
        most_waiting = second.waiting
        second_body = await read_all(second)
        assert len(second_body) == second_size
        assert most_waiting <= HIGH_WATER + READ_SLACK, most_waiting


# -- 10. malformed and oversize answer heads ---------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\nX-Bare: lf\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
        b"HTTP/1.1 200 OK\r\nBad Header: v\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["garbage", "bare-lf", "bare-lf-one-line", "bad-length", "two-lengths", "space-name"],
)
async def test_malformed_answer_head_is_an_error(pool: RelayPool, head: bytes) -> None:
    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(head)
        await conn.wait_closed_by_relay()

    async with Upstream(script) as upstream:
        started = time.monotonic()
        with pytest.raises(RelayError) as caught:
            await fetch(pool, upstream.url())
        assert not caught.value.timeout
        assert time.monotonic() - started < QUICK
        async with asyncio.timeout(QUICK):
            await upstream.eof.wait()  # and the connection is dropped


def many_headers(total: int) -> str:
    return "".join(f"X-Filler-{i:05d}: {'v' * 40}\r\n" for i in range(total // 58 + 1))


@pytest.mark.parametrize(
    "extra",
    [many_headers(100 * 1024), f"X-Big: {'v' * 100 * 1024}\r\n"],
    ids=["many-headers", "one-huge-header"],
)
async def test_oversize_answer_head_in_one_piece_is_an_error(pool: RelayPool, extra: str) -> None:
    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(answer_head(2, extra=extra) + b"hi")
        await conn.wait_closed_by_relay()

    async with Upstream(script) as upstream:
        with pytest.raises(RelayError):
            await fetch(pool, upstream.url())


async def test_endless_answer_head_is_cut_off_at_the_limit(pool: RelayPool) -> None:
    """A header that never ends must not be buffered until the pool timeout."""
    stop = asyncio.Event()

    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(400):  # up to 6.4 MB over ~2 s, unless the relay hangs up
            if stop.is_set():
                break
            await conn.send(b"v" * 16384)
            await asyncio.sleep(0.005)
        await conn.wait_closed_by_relay()

    async with Upstream(script) as upstream:
        started = time.monotonic()
        try:
            with pytest.raises(RelayError) as caught:
                await fetch(pool, upstream.url())
        finally:
            stop.set()
        assert not caught.value.timeout
        assert time.monotonic() - started < QUICK


# -- 11. unreachable upstream, closing the pool ------------------------------------------------


async def test_unreachable_port_is_a_quick_error(pool: RelayPool) -> None:
    started = time.monotonic()
    with pytest.raises(RelayError) as caught:
        async with asyncio.timeout(10):
            await pool.request("GET", f"http://127.0.0.1:{free_port()}/files/x", {})
    assert not caught.value.timeout
    assert time.monotonic() - started < QUICK


async def test_pool_close_closes_idle_connections() -> None:
    relay = RelayPool(UA, POOL_TIMEOUT)
    async with Upstream(serving({"/a": b"abc", "/b": b"de"})) as upstream:
        await asyncio.gather(fetch(relay, upstream.url("/a")), fetch(relay, upstream.url("/b")))
        await asyncio.sleep(0.1)
        assert upstream.eofs == []  # kept alive while the pool lives
        relay.close()
        async with asyncio.timeout(QUICK):
            while len(upstream.eofs) < upstream.accepts:
                await asyncio.sleep(0.02)
        assert sorted(upstream.eofs) == list(range(upstream.accepts))


# -- beyond the list: framing details ----------------------------------------------------------


@pytest.mark.parametrize(
    "glued",
    [answer_head(5) + b"EVIL!", b"HTTP/1.1 404 Not Found\r\nX-Pad: "],
    ids=["whole-answer", "partial-head"],
)
async def test_extra_bytes_after_an_answer_never_reach_the_next_request(
    pool: RelayPool, glued: bytes
) -> None:
    """Bytes glued to an answer (a desync, a buggy upstream) arrived before the next request
    was sent: they must not become part of its answer."""

    async def script(conn: Conn) -> None:
        if conn.index == 0:
            assert await conn.request() is not None
            await conn.send(answer_head(5) + b"first" + glued)
        while await conn.request() is not None:
            await conn.send(answer_head(5) + b"right")

    async with Upstream(script) as upstream:
        first = await pool.request("GET", upstream.url(), {})
        with contextlib.suppress(RelayError):  # refusing the tainted answer is fine too
            await read_all(first)
        await asyncio.sleep(0.05)
        answer, body = await fetch(pool, upstream.url())
        assert (answer.status, body) == (200, b"right")


async def test_close_delimited_body_ends_cleanly(pool: RelayPool) -> None:
    """No Content-Length, not chunked: the body ends with the connection (RFC 9112 6.3)."""
    body = blob(50_000)

    async def script(conn: Conn) -> None:
        assert await conn.request() is not None
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)

    async with Upstream(script) as upstream:
        answer = await pool.request("GET", upstream.url(), {})
        assert answer.content_length is None
        assert digest(await read_all(answer)) == digest(body)


async def test_interim_1xx_answer_is_skipped(pool: RelayPool) -> None:
    """A client must accept 1xx answers before the final one (RFC 9110 15.2)."""

    async def script(conn: Conn) -> None:
        while await conn.request() is not None:
            early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
            await conn.send(early + answer_head(5) + b"final")

    async with Upstream(script) as upstream:
        answer, body = await fetch(pool, upstream.url())
        assert (answer.status, body) == (200, b"final")
        assert (await fetch(pool, upstream.url()))[1] == b"final"


# -- the same on uvloop, which `serve` runs on ---------------------------------------------------


UVLOOP_CASES = [
    test_sequential_requests_reuse_one_connection,
    test_stale_connection_retried_on_a_new_one,
    test_chunked_answer_is_decoded,
    test_body_breaking_off_raises_and_connection_is_dropped,
    test_body_stall_times_out_and_connection_is_dropped,
    test_head_answer_has_no_body_and_next_get_works,
    test_slow_reader_pauses_the_upstream,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__[5:])
def test_on_uvloop(case: Callable[[RelayPool], Awaitable[None]]) -> None:
    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        relay = RelayPool(UA, POOL_TIMEOUT)
        try:
            await case(relay)
        finally:
            relay.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


# -- 12. end to end through the real server ----------------------------------------------------


class CountingForwarder:
    """A TCP forwarder in front of the fake PyPI that counts the connections it accepts."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepts = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepts += 1
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            done: list[int] = []
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target, (client, upstream), done), daemon=True
                ).start()

    @staticmethod
    def _pump(
        source: socket.socket,
        target: socket.socket,
        pair: tuple[socket.socket, socket.socket],
        done: list[int],
    ) -> None:
        try:
            while data := source.recv(262144):
                target.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        done.append(1)
        if len(done) == 2:
            for sock in pair:
                sock.close()

    def __enter__(self) -> CountingForwarder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def files(fake_pypi: FakePyPI) -> Iterator[list[tuple[str, bytes]]]:
    sizes = {"demo_pkg-1.0.tar.gz": 1500, "demo_pkg-1.1.tar.gz": 200_000}
    sizes["demo_pkg-1.2.tar.gz"] = 3 * 1024 * 1024
    made = []
    for number, (filename, size) in enumerate(sizes.items()):
        added = fake_pypi.add_file("demo-pkg", f"1.{number}", filename, blob(size, number))
        made.append((added.path, added.content))
    yield made


def test_concurrent_proxied_downloads_share_few_upstream_connections(
    tmp_path: Path, fake_pypi: FakePyPI, files: list[tuple[str, bytes]]
) -> None:
    with (
        CountingForwarder(fake_pypi.port) as forwarder,
        Mirror(
            tmp_path,
            fake_pypi.url,
            f"http://127.0.0.1:{forwarder.port}/files",
            fallback={"default": "proxy"},
        ) as mirror,
    ):
        wanted = [files[i % len(files)] for i in range(20)]

        def download(item: tuple[str, bytes]) -> tuple[int, tuple[int, str]]:
            reply = http(f"{mirror.base}/packages/{item[0]}")
            return reply.status, digest(reply.body)

        with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
            results = list(pool.map(download, wanted))
        assert results == [(200, digest(content)) for _path, content in wanted]
        assert len(fake_pypi.requests_matching("/files/packages/", "GET")) == 20
        assert 1 <= forwarder.accepts <= 8, forwarder.accepts


def test_truncated_upstream_body_cuts_the_client_off(
    tmp_path: Path, fake_pypi: FakePyPI, files: list[tuple[str, bytes]]
) -> None:
    path, content = files[2]
    filename = path.rsplit("/", 1)[1]
    with Mirror(
        tmp_path, fake_pypi.url, fake_pypi.files_url, fallback={"default": "proxy"}
    ) as mirror:
        url = f"{mirror.base}/packages/{path}"
        assert digest(http(url).body) == digest(content)  # a kept-alive upstream connection
        fake_pypi.truncate(filename)
        with pytest.raises((IncompleteRead, ConnectionError)) as caught:
            http(url, timeout=5)  # a connection left open after the short body fails here
        if isinstance(caught.value, IncompleteRead):
            assert len(caught.value.partial) < len(content)
        fake_pypi.clear_faults()
        for _ in range(2):
            reply = http(url)
            assert reply.status == 200 and digest(reply.body) == digest(content)
        assert "Traceback" not in mirror.stderr()
