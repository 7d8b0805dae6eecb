"""The fast path (server/fastpath.py) answers exactly as the aiohttp path does.

Every scenario is played against two real servers over identical repositories (same bytes,
same mtimes): one as shipped, one with ``PYPI_MIRROR_NO_FASTPATH=1`` (aiohttp only). The raw
bytes each sends back must match, but for the Date header; so must the access-log lines (but
for time and duration) and the votes.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror

SMALL = "ab/cd/" + "1" * 60 + "/demo_pkg-1.0-py3-none-any.whl"
LARGE = "ab/cd/" + "2" * 60 + "/demo_pkg-1.0.tar.gz"  # above the in-memory limit: sendfile
HUGE = "ab/cd/" + "3" * 60 + "/demo_pkg-2.0.tar.gz"  # more than a socket takes at once
PAGE = "/pypi/simple/demo-pkg/"
V1_JSON = "application/vnd.pypi.simple.v1+json"
V1_HTML = "application/vnd.pypi.simple.v1+html"
LARGE_BODY = bytes(i * 7919 % 251 for i in range(200_000))
_DATE = re.compile(rb"\r\nDate: [^\r]*")


def _populate(repo: Path, mtime_ns: int) -> None:
    files = {
        repo / "simple" / "demo-pkg" / "index.html": (
            b'<!DOCTYPE html>\n<html><body><a href="../../packages/x">x</a>\n'
            b"</body></html>\n<!--SERIAL 4242-->\n"
        ),
        repo / "simple" / "demo-pkg" / "index.v1.json": (
            b'{"meta":{"_last-serial":4242,"api-version":"1.1"},"name":"demo-pkg","files":[]}'
        ),
        repo / "packages" / SMALL: bytes(range(256)) * 4,
        repo / "packages" / LARGE: LARGE_BODY,
        repo / "packages" / HUGE: bytes(range(251)) * 16_000,
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def pair(
    tmp_path: Path, fake_pypi: FakePyPI, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Mirror, Mirror]]:
    """(fast path on, aiohttp only), trusting 127.0.0.1 and 10/8 as proxies."""
    mtime_ns = (int(time.time()) - 60) * 1_000_000_000  # fresh: no on-demand refresh due
    mirrors = []
    for name in ("fast", "plain"):
        folder = tmp_path / name
        folder.mkdir()
        mirror = Mirror(
            folder,
            fake_pypi.url,
            fake_pypi.files_url,
            trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"],
            timeouts={"read": "1s"},
        )
        _populate(mirror.repo, mtime_ns)
        mirrors.append(mirror)
    mirrors[0].start()
    monkeypatch.setenv("PYPI_MIRROR_NO_FASTPATH", "1")
    mirrors[1].start()
    try:
        yield mirrors[0], mirrors[1]
    finally:
        for mirror in mirrors:
            mirror.stop()


def _read_response(conn: socket.socket, buffered: bytearray, head_only: bool) -> bytes | None:
    """One whole response from the connection (None at end of stream)."""
    while b"\r\n\r\n" not in buffered:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffered += chunk
    end = buffered.index(b"\r\n\r\n") + 4
    match = re.search(rb"\r\nContent-Length: (\d+)", bytes(buffered[:end]))
    length = int(match.group(1)) if match and not head_only else 0
    while len(buffered) < end + length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buffered += chunk
    response = bytes(buffered[: end + length])
    del buffered[: end + length]
    return response


def _exchange(
    port: int, requests: list[bytes], *, pipelined: bool = False, source: str = "127.0.0.1"
) -> list[bytes]:
    """Send the requests on one connection; every response, then whatever came before close."""
    responses: list[bytes] = []
    buffered = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as c:
        if pipelined:
            c.sendall(b"".join(requests))
        try:
            for request in requests:
                if not pipelined:
                    c.sendall(request)
                reply = _read_response(c, buffered, request.startswith(b"HEAD "))
                if reply is None:
                    break
                responses.append(reply)
            c.shutdown(socket.SHUT_WR)  # done: the server closes too
            while chunk := c.recv(65536):
                buffered += chunk
        except (OSError, TimeoutError):
            pass  # the server had closed the connection
        responses.append(b"<rest>" + bytes(buffered))
    return [_DATE.sub(b"", response) for response in responses]


def _request(target: str, method: str = "GET", version: str = "1.1", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if version == "1.1":
        lines.append("Host: 127.0.0.1")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _same(pair: tuple[Mirror, Mirror], requests: list[bytes], **options: object) -> list[bytes]:
    fast, plain = pair
    got = _exchange(fast.port, requests, **options)  # type: ignore[arg-type]
    expected = _exchange(plain.port, requests, **options)  # type: ignore[arg-type]
    assert got == expected
    return got


def _records(mirror: Mirror) -> tuple[list[dict[str, object]], list[tuple[str, str]]]:
    """Access-log entries (without time and duration) and votes, once the server stopped."""
    assert mirror.stop() == 0
    entries = [
        {k: v for k, v in orjson.loads(line).items() if k not in ("time", "duration_ms")}
        for line in mirror.access_log.read_bytes().splitlines()
    ]
    return entries, sorted(mirror.votes())


def test_pages_and_files_byte_for_byte(pair: tuple[Mirror, Mirror]) -> None:
    small, large = f"/pypi/packages/{SMALL}", f"/pypi/packages/{LARGE}"
    pip = "pip/24.0 {}"
    requests = [
        _request(PAGE),
        _request(PAGE, Accept="text/html"),
        _request(PAGE, Accept=V1_HTML),
        _request(PAGE, Accept=V1_JSON),
        _request(PAGE, Accept="application/vnd.pypi.simple.latest+json, */*;q=0.1"),
        _request(PAGE, "HEAD", Accept=V1_JSON),
        _request(small, User_Agent=pip),
        _request(small, "HEAD", User_Agent=pip),
        _request(large, User_Agent=pip, X_Forwarded_For="6.6.6.6, 10.1.1.1"),
        _request(small, User_Agent=pip, X_Forwarded_For="2001:db8:1:2::7"),
        _request(small, User_Agent="bandersnatch 6.0", X_Forwarded_For="7.7.7.7"),
        _request(small, User_Agent=pip, Referer="https://example.org/"),
        _request(PAGE, Connection="close"),
    ]
    replies = _same(pair, requests)
    assert len(replies) == len(requests) + 1 and replies[-1] == b"<rest>"
    assert all(reply.startswith(b"HTTP/1.1 200 OK\r\n") for reply in replies[:-1])
    assert replies[3].split(b"\r\n")[1] == f"Content-Type: {V1_JSON}".encode()
    assert b"X-PyPI-Last-Serial: 4242\r\n" in replies[0]
    assert replies[-2].endswith(b"<!--SERIAL 4242-->\n")
    # each request again, on a connection of its own
    for request in requests:
        _same(pair, [request])
    fast, plain = pair
    fast_records, plain_records = _records(fast), _records(plain)
    assert fast_records == plain_records
    entries, votes = fast_records
    assert len(entries) == 2 * len(requests) + 1  # + the start-up readiness check
    assert votes == sorted(
        [(SMALL, "127.0.0.0/24"), (LARGE, "6.6.6.0/24"), (SMALL, "2001:db8:1::/48")]
    )


def test_untrusted_peer_cannot_forge_forwarded_for(pair: tuple[Mirror, Mirror]) -> None:
    request = _request(f"/pypi/packages/{SMALL}", User_Agent="pip/24", X_Forwarded_For="9.9.9.9")
    _same(pair, [request], source="127.0.0.2")
    fast_records, plain_records = _records(pair[0]), _records(pair[1])
    assert fast_records == plain_records
    assert fast_records[1] == [(SMALL, "127.0.0.0/24")]
    assert fast_records[0][-1]["client_ip"] == "127.0.0.2"


def test_keep_alive_sequence_handed_off_midway(pair: tuple[Mirror, Mirror]) -> None:
    small = f"/pypi/packages/{SMALL}"
    requests = [
        _request(PAGE),
        _request(small, User_Agent="pip/24"),
        _request(small, Range="bytes=0-9"),  # aiohttp's from here on
        _request(PAGE),
        _request(PAGE + "?format=" + V1_JSON),
        _request("/pypi/simple/Demo_Pkg/"),
        _request(small, Connection="close"),
    ]
    for pipelined in (False, True):
        replies = _same(pair, requests, pipelined=pipelined)
        assert replies[2].startswith(b"HTTP/1.1 206 Partial Content\r\n")
        assert replies[5].startswith(b"HTTP/1.1 301 ")
        assert replies[-1] == b"<rest>"
    assert _records(pair[0]) == _records(pair[1])


def test_pipelined_fast_requests(pair: tuple[Mirror, Mirror]) -> None:
    small, large, huge = (f"/pypi/packages/{p}" for p in (SMALL, LARGE, HUGE))
    requests = [_request(PAGE), _request(large), _request(small, "HEAD"), _request(huge)] * 3
    requests.append(_request(PAGE, Connection="close"))
    replies = _same(pair, requests, pipelined=True)
    assert len(replies) == len(requests) + 1
    assert _records(pair[0]) == _records(pair[1])


def test_http10_and_connection_close(pair: tuple[Mirror, Mirror]) -> None:
    small = f"/pypi/packages/{SMALL}"
    replies = _same(pair, [_request(PAGE, version="1.0"), _request(PAGE, version="1.0")])
    assert len(replies) == 2  # one answer, then the server closed
    assert replies[0].startswith(b"HTTP/1.0 200 OK\r\n") and b"Connection:" not in replies[0]
    keep = _request(small, version="1.0", Connection="keep-alive")
    replies = _same(pair, [keep, keep, _request(small, version="1.0")])
    assert len(replies) == 4 and b"Connection: keep-alive\r\n" in replies[0]
    replies = _same(pair, [_request(small, Connection="close"), _request(small)])
    assert len(replies) == 2 and b"Connection: close\r\n" in replies[0]
    assert _records(pair[0]) == _records(pair[1])


def test_unusual_requests_are_aiohttps(pair: tuple[Mirror, Mirror]) -> None:
    """Each of these takes the hand-off; the answers show aiohttp gave them."""
    small = f"/pypi/packages/{SMALL}"
    cases = [
        _request(PAGE, Accept="image/png"),  # 406
        _request("/pypi/simple"),
        _request("/pypi/simple/demo-pkg"),
        _request(small, If_None_Match='"x"'),
        _request(small, "POST"),
        _request(f"/pypi/packages/{SMALL[:-4]}.zip"),  # not local: 302
        _request(small, X_Big="a" * 9000),  # 400
        _request(small, version="1.1", Transfer_Encoding="chunked") + b"0\r\n\r\n",
        b"GET " + small.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\r\n\r\n",
        b"GET " + small.encode() + b" HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET http://127.0.0.1" + small.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for request in cases:
        _same(pair, [request, _request(PAGE, Connection="close")])
    assert _records(pair[0]) == _records(pair[1])


def test_slow_head_is_cut_by_read_timeout(pair: tuple[Mirror, Mirror]) -> None:
    fast = pair[0]
    with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as conn:
        conn.sendall(_request(PAGE))
        buffered = bytearray()
        assert _read_response(conn, buffered, False) is not None
        conn.sendall(b"GET /pypi/simple/demo-pkg/ HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert conn.recv(100) == b""  # closed after timeouts.read, not answered


def test_shutdown_keeps_every_fast_path_vote(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    mirror = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, trusted_proxies=["127.0.0.1/32"])
    _populate(mirror.repo, time.time_ns())
    mirror.start()
    try:
        requests = [
            _request(f"/pypi/packages/{SMALL}", User_Agent="pip", X_Forwarded_For=f"10.0.{i}.1")
            for i in range(100)
        ]
        replies = _exchange(mirror.port, requests, pipelined=True)
        assert len(replies) == 101
    finally:
        assert mirror.stop() == 0
    assert len(mirror.votes()) == 100
