"""Hostile HTTP over raw sockets, against the real `pypi-mirror serve`.

What every case here asks of the server's HTTP layer:

- a clean answer: a 4xx (a malformed head gets exactly 400, an oversize one 400/413/414/431)
  or a correct response; never a 5xx, never a traceback or an ERROR line on stderr;
- a malformed head is refused at once (long before the read timeout) and the connection is
  closed after the 400: whatever the client sent behind it is never answered (no smuggling);
- pipelined requests are answered in order, each completely;
- one access-log line (valid JSON) per answered request, refused heads included;
- client hang-ups mid-download and floods of distinct large heads cost nothing lasting.

One server (``workers: 1``) serves the whole module; each test checks the stderr written
during it and that the server still answers afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.fakepypi import FakeFile, FakePyPI
from tests.mirror import Mirror

REPLY_WAIT = 5.0  # seconds for an answer: far below the server's 30 s read timeout
CLOSE_WAIT = 2.0  # seconds for the close (or the next pipelined answer) after an answer
PROXIED_SOURCE = "127.0.0.2"  # a fallback rule makes the mirror proxy files for this client

PAGE = "/pypi/simple/demo/"
PAGE_HTML = (
    b'<!DOCTYPE html>\n<html><body><a href="../../packages/x">x</a>\n'
    b"</body></html>\n<!--SERIAL 4242-->\n"
)
PAGE_JSON = b'{"meta":{"_last-serial":4242,"api-version":"1.1"},"name":"demo","files":[]}'
BIG_PATH = "ab/cd/" + "4" * 60 + "/big_pkg-1.0.tar.gz"
BIG_BODY = (bytes(range(251)) * 20_900)[: 5 * 1024 * 1024]
FOLLOW = b"GET /pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\n\r\n"  # smuggled behind bad heads


# ------------------------------------------------------------------------ the raw client


@dataclass
class Response:
    status: int
    head: bytes  # status line and header lines, without the blank line
    body: bytes
    complete: bool  # the whole body arrived (as its framing announced)

    def header_lines(self) -> list[bytes]:
        return self.head.split(b"\r\n")[1:]

    def headers(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        found = []
        for line in self.header_lines():
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                found.append(value.strip())
        return found


@dataclass
class Exchange:
    responses: list[Response]
    closed: bool  # the server closed (FIN or reset) rather than leaving us waiting
    leftover: bytes  # bytes after the last whole response
    seconds: float  # from the send to the end of reading
    statuses: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.statuses = [r.status for r in self.responses]

    def silence(self) -> str:
        how = "closed without an answer" if self.closed else "no answer and no close"
        return f"{how} after {self.seconds:.1f} s"


class Client:
    """One connection; reads whole responses, whatever their framing."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = REPLY_WAIT) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.buf = bytearray()
        self.eof = False
        self.stalled = False

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        # The server may refuse before reading everything: then read what it said.
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def more(self) -> bool:
        if self.eof or self.stalled:
            return False
        try:
            chunk = self.sock.recv(1 << 18)
        except TimeoutError:
            self.stalled = True
            return False
        except OSError:  # reset by the server: closed too
            self.eof = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _take(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            if not self.more():
                return None
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def _line(self) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self.more():
                return None
        end = self.buf.index(b"\r\n")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def response(self, head_only: bool = False) -> Response | None:
        """The next whole response; None when the server closed or went quiet first."""
        while b"\r\n\r\n" not in self.buf:
            if not self.more():
                return None
        end = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
        assert len(parts) >= 2 and parts[0] in (b"HTTP/1.1", b"HTTP/1.0"), head[:200]
        assert parts[1].isdigit() and len(parts[1]) == 3, head[:200]
        reply = Response(int(parts[1]), head, b"", True)
        if head_only or reply.status in (204, 304) or reply.status < 200:
            return reply
        lengths = reply.headers("content-length")
        if b"chunked" in b",".join(reply.headers("transfer-encoding")).lower():
            reply.body, reply.complete = self._chunked()
        elif lengths:
            assert len(lengths) == 1 and lengths[0].isdigit(), head[:300]
            body = self._take(int(lengths[0]))
            if body is None:
                reply.body, reply.complete = bytes(self.buf), False
                self.buf.clear()
            else:
                reply.body = body
        else:  # delimited by the close
            while self.more():
                pass
            reply.body, reply.complete = bytes(self.buf), self.eof
            self.buf.clear()
        return reply

    def _chunked(self) -> tuple[bytes, bool]:
        body = bytearray()
        while True:
            line = self._line()
            if line is None:
                return bytes(body), False
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (trailer := self._line()) is not None and trailer:
                    pass
                return bytes(body), trailer is not None
            data = self._take(size + 2)
            if data is None:
                return bytes(body), False
            body += data[:-2]

    def read_all(self, heads: list[bool] | None = None) -> list[Response]:
        """Responses until the server closes or goes quiet (``CLOSE_WAIT`` after the first)."""
        responses: list[Response] = []
        while True:
            head_only = heads[len(responses)] if heads and len(responses) < len(heads) else False
            reply = self.response(head_only)
            if reply is None:
                return responses
            responses.append(reply)
            self.sock.settimeout(CLOSE_WAIT)


def exchange(
    port: int, data: bytes, *, source: str = "127.0.0.1", heads: list[bool] | None = None
) -> Exchange:
    """Send ``data`` at once on a new connection; every response until close or silence."""
    client = Client(port, source)
    try:
        started = time.monotonic()
        client.send(data)
        responses = client.read_all(heads)
        if not client.eof and not client.stalled:
            client.more()  # one more read tells a close from silence
        return Exchange(responses, client.eof, bytes(client.buf), time.monotonic() - started)
    finally:
        client.close()


def request(target: str | bytes, *headers: str | bytes, method: str = "GET") -> bytes:
    """A well-formed HTTP/1.1 request head (extra header lines as given)."""
    if isinstance(target, str):
        target = target.encode()
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: x"]
    lines += [h.encode() if isinstance(h, str) else h for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# ------------------------------------------------------------------------ the server


@dataclass
class Served:
    mirror: Mirror
    upstream: FakePyPI
    wheel: FakeFile  # held locally
    remote: FakeFile  # upstream only: 302 (or proxied for PROXIED_SOURCE)
    stderr_mark: int = 0

    @property
    def port(self) -> int:
        return self.mirror.port

    @property
    def wheel_url(self) -> str:
        return f"/pypi/packages/{self.wheel.path}"

    @property
    def remote_url(self) -> str:
        return f"/pypi/packages/{self.remote.path}"

    def new_stderr(self) -> str:
        return self.mirror.stderr()[self.stderr_mark :]

    def assert_clean(self) -> None:
        """Nothing alarming on stderr since the test began, and the server still answers."""
        after = exchange(self.port, request(PAGE, "Connection: close"))
        assert after.statuses == [200], f"server no longer answers: {after}"
        time.sleep(0.1)  # late log lines of the test's connections
        lines = self.new_stderr().splitlines()
        errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
        tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        # the exception line that ends each traceback (the first unindented line after it)
        raised = [
            next((line for line in lines[i + 1 :] if line and not line[0].isspace()), "?")
            for i in tracebacks
        ]
        assert not tracebacks and not errors, (
            f"stderr: {len(errors)} ERROR lines, {len(tracebacks)} tracebacks; first: "
            f"{errors[:1]} raising {raised[:1]}"
        )

    def log_lines(self, settle: float = 1.3) -> list[bytes]:
        """The access log's lines once the once-a-second flush has run."""
        time.sleep(settle)
        path = self.mirror.access_log
        return path.read_bytes().splitlines() if path.exists() else []


def _populate(repo: Path, wheel: FakeFile) -> None:
    now = time.time_ns()
    files = {
        repo / "simple" / "demo" / "index.html": PAGE_HTML,
        repo / "simple" / "demo" / "index.v1.json": PAGE_JSON,
        repo / "packages" / wheel.path: wheel.content,
        repo / "packages" / BIG_PATH: BIG_BODY,
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, ns=(now, now))  # fresh: no on-demand refresh due


@pytest.fixture(scope="module")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with FakePyPI() as upstream:
        wheel = upstream.add_wheel("demo", "1.0")
        remote = upstream.add_wheel("demo", "2.0")
        mirror = Mirror(
            tmp_path_factory.mktemp("hostile-http"),
            upstream.url,
            upstream.files_url,
            fallback={"default": "302", "rules": [{"cidr": "127.0.0.2/32", "mode": "proxy"}]},
        )
        _populate(mirror.repo, wheel)
        with mirror:
            yield Served(mirror, upstream, wheel, remote)


@pytest.fixture
def served(_server: Served) -> Served:
    _server.stderr_mark = len(_server.mirror.stderr())
    _server.upstream.clear_requests()
    return _server


# ------------------------------------------------------------------------ malformed heads

GOOD = b"GET /pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\n"
OVERSIZE = (400, 413, 414, 431)
CL, TE = b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n"

# name -> (bytes, acceptable statuses); FOLLOW is sent behind each and must go unanswered.
MALFORMED: dict[str, tuple[bytes, tuple[int, ...]]] = {
    "cl-and-te": (GOOD + CL + TE + b"\r\n0\r\n\r\n", (400,)),
    "te-and-cl": (GOOD + TE + CL + b"\r\n0\r\n\r\n", (400,)),
    "te-chunked-not-last": (GOOD + b"Transfer-Encoding: chunked, identity\r\n\r\n", (400,)),
    "two-content-lengths": (GOOD + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\n", (400,)),
    "content-length-list": (GOOD + b"Content-Length: 0, 5\r\n\r\n", (400,)),
    "content-length-negative": (GOOD + b"Content-Length: -1\r\n\r\n", (400,)),
    "content-length-plus": (GOOD + b"Content-Length: +0\r\n\r\n", (400,)),
    "content-length-huge": (GOOD + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n", (400, 413)),
    "bare-lf-smuggle": (
        b"GET /pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\nX-A: a\nContent-Length: 44\r\n\r\n",
        (400,),
    ),
    "bare-lf-everywhere": (b"GET /pypi/simple/demo/ HTTP/1.1\nHost: x\n\n", (400,)),
    "bare-lf-request-line": (b"GET /pypi/simple/demo/ HTTP/1.1\nHost: x\r\n\r\n", (400,)),
    "bare-cr-in-value": (GOOD + b"X-A: a\rX-B: b\r\n\r\n", (400,)),
    "bare-cr-request-line": (b"GET /pypi/simple/demo/ HTTP/1.1\rHost: x\r\n\r\n", (400,)),
    "obs-fold-space": (GOOD + b"X-A: a\r\n  folded\r\n\r\n", (400,)),
    "obs-fold-tab": (GOOD + b"X-A: a\r\n\tfolded\r\n\r\n", (400,)),
    "obs-fold-first-line": (b"GET /pypi/simple/demo/ HTTP/1.1\r\n Host: x\r\n\r\n", (400,)),
    "nul-in-target": (b"GET /pypi/simple/de\x00mo/ HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    "nul-in-value": (GOOD + b"X-A: a\x00b\r\n\r\n", (400,)),
    "nul-in-name": (GOOD + b"X-\x00A: b\r\n\r\n", (400,)),
    "space-in-name": (GOOD + b"X A: b\r\n\r\n", (400,)),
    "space-before-colon": (GOOD + b"X-A : b\r\n\r\n", (400,)),
    "non-token-name-at": (GOOD + b"X@A: b\r\n\r\n", (400,)),
    "non-token-name-paren": (GOOD + b"X(A): b\r\n\r\n", (400,)),
    "non-token-name-utf8": (GOOD + "X-Ä: b\r\n\r\n".encode(), (400,)),
    "empty-name": (GOOD + b": b\r\n\r\n", (400,)),
    "no-colon": (GOOD + b"X-A b\r\n\r\n", (400,)),
    "trailing-space": (b"GET /pypi/simple/demo/ HTTP/1.1 \r\nHost: x\r\n\r\n", (400,)),
    "leading-space": (b" GET /pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    "tab-separator": (b"GET\t/pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    "missing-version": (b"GET /pypi/simple/demo/\r\nHost: x\r\n\r\n", (400,)),
    "missing-target": (b"GET HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    "bad-version": (b"GET /pypi/simple/demo/ HTTP/1.x\r\nHost: x\r\n\r\n", (400,)),
    "lowercase-version": (b"GET /pypi/simple/demo/ http/1.1\r\nHost: x\r\n\r\n", (400,)),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400,)),
    "plain-words": (b"hello there\r\n\r\n", (400,)),
    "garbage-1": (bytes(random.Random(1).randrange(256) for _ in range(600)), (400,)),
    "garbage-2": (bytes(random.Random(2).randrange(256) for _ in range(600)) + b"\r\n\r\n", (400,)),
    "huge-header-value": (GOOD + b"X-Big: " + b"v" * 100_000 + b"\r\n\r\n", OVERSIZE),
    "huge-header-name": (GOOD + b"X-" + b"n" * 100_000 + b": v\r\n\r\n", OVERSIZE),
    "many-headers": (GOOD + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n", OVERSIZE),
    "many-large-headers": (
        GOOD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 7000) for i in range(40)) + b"\r\n",
        OVERSIZE,
    ),
    "huge-url": (b"GET /pypi/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", OVERSIZE),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_head_is_refused_at_once_then_closed(served: Served, name: str) -> None:
    data, allowed = MALFORMED[name]
    got = exchange(served.port, data + FOLLOW)
    assert got.responses, got.silence()
    assert got.statuses == [got.statuses[0]] and got.statuses[0] in allowed, got.statuses
    assert got.responses[0].complete
    assert got.closed, "connection left open after the refusal"
    assert got.leftover == b""
    served.assert_clean()


BAD_CHUNKS = {
    "not-hex": b"zz\r\nabc\r\n0\r\n\r\n",
    "negative": b"-1\r\na\r\n0\r\n\r\n",
    "0x-prefix": b"0x1\r\na\r\n0\r\n\r\n",
    "overflow": b"f" * 20 + b"\r\na\r\n0\r\n\r\n",
    "empty-size": b"\r\na\r\n0\r\n\r\n",
    "data-longer-than-size": b"1\r\nabc\r\n0\r\n\r\n",
    "size-with-space": b"1 1\r\na\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_CHUNKS))
def test_bad_chunk_size_is_refused(served: Served, name: str) -> None:
    """The request itself may be answered before its body is read, but the bad chunk gets a
    400 and the close: what follows it in the stream is never taken for a request."""
    data = GOOD + b"Transfer-Encoding: chunked\r\n\r\n" + BAD_CHUNKS[name] + FOLLOW
    got = exchange(served.port, data)
    assert got.responses, got.silence()
    assert got.statuses in ([400], [200, 400]), got.statuses
    assert got.closed and got.leftover == b""
    served.assert_clean()


def _client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="mirror.example")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# Bytes that never make a request line: a parser sees they are wrong from the first bytes, so
# they must not wait for a line end (or the read timeout).
NO_LINE_END = {
    "tls-client-hello": _client_hello(),
    "garbage-no-newline": bytes(random.Random(3).randrange(256) for _ in range(600)).translate(
        None, b"\r\n"
    ),
    "zeros": b"\x00" * 600,
    "printable-words": b"hello there, this is not HTTP at all",
}


@pytest.mark.parametrize("name", list(NO_LINE_END))
def test_non_http_bytes_refused_without_waiting(served: Served, name: str) -> None:
    got = exchange(served.port, NO_LINE_END[name])
    assert got.closed, f"no 400 and no close within {REPLY_WAIT} s: waits for the read timeout"
    assert got.statuses in ([], [400]), got.statuses
    assert got.seconds < REPLY_WAIT
    served.assert_clean()


# Parseable but unusual: any clean answer will do, as long as it is not a 5xx and comes fast.
ODD = {
    "http11-without-host": b"GET /pypi/simple/demo/ HTTP/1.1\r\n\r\n",
    # llhttp reads runs of spaces in the request line as one (RFC 9112 allows it): with one
    # parser there is nobody to disagree with, so a clean answer is right.
    "double-space-after-method": b"GET  /pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "double-space-before-version": b"GET /pypi/simple/demo/  HTTP/1.1\r\nHost: x\r\n\r\n",
    "two-hosts": GOOD + b"Host: y\r\n\r\n",
    "unknown-method": request(PAGE, method="BREW"),
    "lowercase-method": request(PAGE, method="get"),
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect": b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
    "absolute-form": b"GET http://x/pypi/simple/demo/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "expect-continue": request(PAGE, "Expect: 100-continue", "Content-Length: 3") + b"abc",
    "get-with-body": request(PAGE, "Content-Length: 5") + b"hello",
    "chunked-get": request(PAGE, "Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n",
    "http10": b"GET /pypi/simple/demo/ HTTP/1.0\r\n\r\n",
    "obs-text-value": GOOD + b"X-A: caf\xe9 \xff\xfe\r\n\r\n",
    "percent-garbage": request("/pypi/simple/%zz%/"),
    "utf8-target": request("/pypi/simple/dëmo/".encode()),
    "raw-high-bytes-target": request(b"/pypi/simple/\xff\xfe/"),
    "query-garbage": request(b"/pypi/simple/demo/?\xff=%00&&=="),
    "fragment-in-target": request("/pypi/simple/demo/#frag"),
    "upgrade-h2c": request(PAGE, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                           "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
    "upgrade-websocket": request(PAGE, "Connection: Upgrade", "Upgrade: websocket"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ODD))
def test_odd_requests_get_a_clean_answer(served: Served, name: str) -> None:
    got = exchange(served.port, ODD[name] + request(PAGE, "Connection: close"))
    assert got.responses, got.silence()
    assert all(s < 500 for s in got.statuses), got.statuses
    assert all(r.complete for r in got.responses)
    served.assert_clean()


# ------------------------------------------------------------------------ ranges


RANGES = {
    "superscript-digits": "bytes=²-³".encode(),
    "arabic-indic-digits": "bytes=١-٢".encode(),
    "fullwidth-digits": "bytes=０-９".encode(),
    "raw-high-bytes": b"bytes=\xff\xfe-1",
    "5000-digit-start": b"bytes=" + b"9" * 5000 + b"-",
    "5000-digit-end": b"bytes=0-" + b"9" * 5000,
    "5000-digit-suffix": b"bytes=-" + b"9" * 5000,
    "3500-digit-both": b"bytes=" + b"1" * 3500 + b"-" + b"2" * 3500,  # under the line limit
    "negative-start": b"bytes=-1-5",
    "double-dash": b"bytes=--1",
    "negative-end": b"bytes=1--2",
    "hex": b"bytes=0x10-0x20",
    "float": b"bytes=1.5-2.5",
    "spaces": b"bytes = 1 - 2",
    "plus-sign": b"bytes=+1-+2",
    "underscore": b"bytes=1_0-2_0",
    "trailing-comma": b"bytes=0-1,",
    "many-ranges": b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(500)),
    "zero-suffix": b"bytes=-0",
    "inverted": b"bytes=9-1",
    "past-end": b"bytes=999999999-",
    "empty": b"bytes=",
    "unit-only": b"bytes",
    "other-unit": b"items=0-1",
}


def _check_range_reply(reply: Response, content: bytes) -> None:
    assert reply.status in (200, 206, 416), reply.head[:300]
    assert reply.complete
    if reply.status == 200:
        assert reply.body == content
    elif reply.status == 206:
        (content_range,) = reply.headers("content-range")
        unit, _, spec = content_range.partition(b" ")
        first, last = (int(n) for n in spec.split(b"/")[0].split(b"-"))
        assert unit == b"bytes" and spec.endswith(b"/%d" % len(content)), content_range
        assert reply.body == content[first : last + 1]


@pytest.mark.parametrize("name", list(RANGES))
@pytest.mark.parametrize("which", ["wheel", "big"])
def test_range_oddities(served: Served, name: str, which: str) -> None:
    if which == "wheel":
        target, content = served.wheel_url, served.wheel.content
    else:
        target, content = f"/pypi/packages/{BIG_PATH}", BIG_BODY
    got = exchange(served.port, request(target, b"Range: " + RANGES[name], "Connection: close"))
    assert len(got.responses) == 1, got.silence()
    _check_range_reply(got.responses[0], content)
    served.assert_clean()


# ------------------------------------------------------------------------ header injection

INJECTIONS = [
    "/pypi/web/x%0d%0aSet-Cookie:%20a=b",
    "/pypi/web/x%0aSet-Cookie:%20a=b",
    "/pypi/web/x%0dSet-Cookie:%20a=b",
    "/pypi/Demo%0d%0aX-Evil:%201/json",
    "/pypi/Demo%0d%0aX-Evil:%201/1.0/json",
    "/pypi/simple/Demo%0d%0aX-Evil:1/",
    "/pypi/simple/Demo%0aX-Evil:1/",
    "/pypi/simple/demo%0d%0aX-Evil:1",
    "/pypi/packages/ab/cd/" + "5" * 60 + "/x%0d%0aX-Evil:1.whl",
]


@pytest.mark.parametrize("target", INJECTIONS, ids=lambda t: t.replace("5" * 60, "5...5"))
def test_no_header_injection_through_redirects(served: Served, target: str) -> None:
    got = exchange(served.port, request(target, "Connection: close"))
    assert len(got.responses) == 1, got.silence()
    reply = got.responses[0]
    assert 300 <= reply.status < 500, reply.head[:300]
    # nothing but CRLF-separated lines: no lone CR or LF a lenient client would split on
    assert b"\r" not in reply.head.replace(b"\r\n", b"") and b"\n" not in reply.head.replace(
        b"\r\n", b""
    ), reply.head
    names = [line.partition(b":")[0].strip().lower() for line in reply.header_lines()]
    assert b"set-cookie" not in names and b"x-evil" not in names, reply.head
    if reply.status < 400:
        assert len(reply.headers("location")) == 1, reply.head
    served.assert_clean()


# ------------------------------------------------------------------------ access log


def test_non_utf8_user_agent_and_referer_are_logged_escaped(served: Served) -> None:
    before = len(served.log_lines())
    data = request(
        served.wheel_url,
        b"User-Agent: \xff\xfe pip/24",
        b"Referer: https://example.org/\xff\xfe\x80",
        "Connection: close",
    )
    got = exchange(served.port, data)
    assert got.statuses == [200]
    assert got.responses[0].body == served.wheel.content
    new = served.log_lines()[before:]
    assert len(new) == 1, new
    entry = orjson.loads(new[0])  # valid JSON, or this raises
    assert entry["path"] == served.wheel_url and entry["status"] == 200
    assert "pip/24" in entry["user_agent"] and "example.org" in entry["referer"]
    served.assert_clean()


def test_one_log_line_per_answered_request(served: Served) -> None:
    before = len(served.log_lines())
    batches = [
        request(PAGE, "Connection: close"),
        request(PAGE) + MALFORMED["bare-lf-smuggle"][0] + request(PAGE),
        MALFORMED["nul-in-target"][0],
        MALFORMED["huge-header-value"][0],
        MALFORMED["garbage-2"][0],
        MALFORMED["http2-preface"][0],
        request("/pypi/nothing-here")
        + request(served.remote_url)
        + request(served.wheel_url, "Connection: close"),
        GOOD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        request(PAGE, "Range: bytes=" + "9" * 5000 + "-", "Connection: close"),
        request("/pypi/web/x%0d%0aSet-Cookie:%20a=b", "Connection: close"),
    ]
    statuses: list[int] = []
    for data in batches:
        statuses += exchange(served.port, data).statuses
    lines = served.log_lines()[before:]
    entries = [orjson.loads(line) for line in lines]
    assert sorted(e["status"] for e in entries) == sorted(statuses), (statuses, entries)
    assert all(s < 500 for s in statuses), statuses
    assert sum(s >= 400 for s in statuses) >= 6  # the refused heads were answered too
    served.assert_clean()


# ------------------------------------------------------------------------ upstream safety

TRAVERSALS = [
    "/pypi/pypi/demo/../json",
    "/pypi/demo/../json",
    "/pypi/demo/%2e%2e/json",
    "/pypi/demo/%2E%2E/json",
    "/pypi/%2e%2e/json",
    "/pypi/%2e%2e/%2e%2e/json",
    "/pypi/demo/%2e%2e%2f%2e%2e/json",
    "/pypi/demo/..%2fjson/json",
    "/pypi/demo/./json",
    "/pypi/demo/%2e/json",
    "/pypi/simple/%2e%2e/",
    "/pypi/simple/demo/%2e%2e/",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_never_reaches_upstream(served: Served, target: str) -> None:
    got = exchange(served.port, request(target, "Connection: close"))
    assert len(got.responses) == 1, got.silence()
    assert got.statuses[0] < 500, got.responses[0].head[:300]
    for record in served.upstream.requests:
        assert ".." not in record.path and "%2e" not in record.path.lower(), record.path
        assert record.path.rstrip("/") not in ("/pypi/json", "/json", "/pypi"), record.path
        assert "/./" not in record.path, record.path
    served.assert_clean()


# ------------------------------------------------------------------------ pipelining


@pytest.mark.parametrize("source", ["127.0.0.1", PROXIED_SOURCE])
def test_pipelined_requests_answered_in_order(served: Served, source: str) -> None:
    proxied = source == PROXIED_SOURCE
    json_accept = "Accept: application/vnd.pypi.simple.v1+json"
    plan: list[tuple[bytes, int, bytes | None]] = [
        (request(PAGE), 200, PAGE_HTML),
        (request("/pypi/nothing-here"), 404, None),
        (request(served.wheel_url), 200, served.wheel.content),
        (request(served.remote_url), 200 if proxied else 302, served.remote.content),
        (request(PAGE, json_accept), 200, PAGE_JSON),
        (request("/pypi/packages/not/a/file.whl"), 404, None),
        (request(f"/pypi/packages/{BIG_PATH}"), 200, BIG_BODY),
        (request(PAGE, "Range: bytes=0-9"), 200, PAGE_HTML),  # a page: ranges ignored or 206
        (request(served.wheel_url, "Range: bytes=0-9"), 206, served.wheel.content[:10]),
        (request(served.wheel_url, method="HEAD"), 200, b""),
        (request(PAGE, "Connection: close"), 200, PAGE_HTML),
    ]
    heads = [data.startswith(b"HEAD ") for data, _, _ in plan]
    got = exchange(served.port, b"".join(d for d, _, _ in plan), source=source, heads=heads)
    assert len(got.responses) == len(plan), got.statuses
    for (data, status, body), reply in zip(plan, got.responses, strict=True):
        what = data.split(b"\r\n", 1)[0]
        assert reply.complete, what
        if b"Range" in data and status == 200 and reply.status == 206:
            continue  # a page may honour the range too
        assert reply.status == status, (what, reply.head[:300])
        if status == 302:
            (location,) = reply.headers("location")
            assert location.endswith(served.remote.path.encode())
        elif body is not None:
            assert hashlib.sha256(reply.body).digest() == hashlib.sha256(body).digest(), what
    assert got.closed and got.leftover == b""
    served.assert_clean()


@pytest.mark.parametrize("bad", ["bare-lf-smuggle", "nul-in-target", "obs-fold-space", "garbage-1"])
def test_pipelined_good_bad_good(served: Served, bad: str) -> None:
    data = request(served.wheel_url) + MALFORMED[bad][0] + request(PAGE)
    got = exchange(served.port, data)
    assert got.statuses == [200, 400], got.statuses
    assert got.responses[0].body == served.wheel.content
    assert got.closed and got.leftover == b""
    served.assert_clean()


def test_many_pipelined_requests_all_complete(served: Served) -> None:
    targets = [PAGE, served.wheel_url, "/pypi/nothing-here", served.remote_url] * 50
    data = b"".join(request(t) for t in targets) + request(PAGE, "Connection: close")
    got = exchange(served.port, data)
    expected = [200, 200, 404, 302] * 50 + [200]
    assert got.statuses == expected
    assert all(r.complete for r in got.responses)
    assert all(r.body == served.wheel.content for r in got.responses[1::4][:50])
    assert got.closed and got.leftover == b""
    served.assert_clean()


def test_thousands_of_pipelined_requests_in_one_read(served: Served) -> None:
    """Answered in a loop, not by recursion: one read may carry thousands of requests."""
    data = request(PAGE, method="HEAD") * 3000 + request(PAGE, "Connection: close")
    got = exchange(served.port, data, heads=[True] * 3000 + [False])
    assert got.statuses == [200] * 3001
    assert got.closed
    served.assert_clean()


# ------------------------------------------------------------------------ hang-ups


def _hang_up(port: int, index: int, errors: list[str]) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=REPLY_WAIT) as conn:
            if index % 2:  # half of them reset instead of a clean close
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.sendall(request(f"/pypi/packages/{BIG_PATH}", "User-Agent: pip/24"))
            if index % 5 == 0:
                return  # gone before the answer
            got = conn.recv(64 if index % 3 else 70_000)
            if not got.startswith(b"HTTP/1.1 200 "):
                errors.append(f"{index}: {got[:60]!r}")
    except OSError as error:
        errors.append(f"{index}: {error!r}")


def test_clients_hanging_up_mid_download(served: Served) -> None:
    errors: list[str] = []
    threads = [threading.Thread(target=_hang_up, args=(served.port, i, errors)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    time.sleep(1.0)  # let the server notice every hang-up
    got = exchange(served.port, request(f"/pypi/packages/{BIG_PATH}", "Connection: close"))
    assert got.statuses == [200] and got.responses[0].body == BIG_BODY
    served.assert_clean()


# ------------------------------------------------------------------------ memory


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _flood(port: int, start: int, count: int, failures: list[str]) -> None:
    """``count`` requests with unique ~7 KB Accept values (what negotiation might remember)."""
    pad = b"p" * 6900
    batch = 25
    client = Client(port, timeout=15)
    try:
        for first in range(start, start + count, batch):
            data = b"".join(
                request(
                    PAGE,
                    b"Accept: text/html, application/x-%d-%s;q=0.5" % (i, pad),
                    b"X-Unique-%d: 1" % i,
                )
                for i in range(first, min(first + batch, start + count))
            )
            client.send(data)
            for _ in range(first, min(first + batch, start + count)):
                reply = client.response()
                if reply is None or reply.status != 200 or reply.body != PAGE_HTML:
                    failures.append(f"{start}+{first}: {reply and reply.head[:100]!r}")
                    return
    finally:
        client.close()


def _flood_all(port: int, start: int, total: int, connections: int) -> list[str]:
    failures: list[str] = []
    share = total // connections
    threads = [
        threading.Thread(target=_flood, args=(port, start + n * share, share, failures))
        for n in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return failures


def test_memory_flat_under_distinct_maximal_heads(served: Served) -> None:
    process = served.mirror.process
    assert process is not None
    assert not _flood_all(served.port, 0, 1000, 4)  # warm-up: buffers, allocator arenas
    before = _rss_kib(process.pid)
    failures = _flood_all(served.port, 1_000_000, 10_000, 4)
    assert not failures, failures[:5]
    grown = (_rss_kib(process.pid) - before) / 1024
    assert grown < 50, f"RSS grew by {grown:.0f} MB over 10,000 distinct heads"
    served.assert_clean()
