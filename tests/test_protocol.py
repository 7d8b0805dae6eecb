"""The HTTP layer (server/protocol.py) over raw sockets, against the real `pypi-mirror serve`.

Every answer is checked explicitly: status line, Content-Type per negotiation, validators,
Content-Length, exact body bytes for pages and for small (in memory), large (sendfile) and
huge (more than a socket takes at once) files; HEAD, 304, 206 and 416; keep-alive, pipelining,
HTTP/1.0 and ``Connection: close``; redirects, 406, 405; one access-log line per request with
the right status, size and client address; votes. Then the shutdown bounds (SIGTERM: 30 s of
grace for in-flight answers; a second signal cuts at once; no accepted vote is lost), clients
hanging up mid-download, header bytes that are not UTF-8, the absolute-form request target,
and ``timeouts.write`` (a stalled reader is cut, a slow but steady one is not).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror

SMALL = "ab/cd/" + "1" * 60 + "/demo_pkg-1.0-py3-none-any.whl"
LARGE = "ab/cd/" + "2" * 60 + "/demo_pkg-1.0.tar.gz"  # above the in-memory limit: sendfile
HUGE = "ab/cd/" + "3" * 60 + "/demo_pkg-2.0.tar.gz"  # more than a socket takes at once
PAGE = "/pypi/simple/demo-pkg/"
TEXT_HTML = "text/html"
V1_JSON = "application/vnd.pypi.simple.v1+json"
V1_HTML = "application/vnd.pypi.simple.v1+html"
PAGE_HTML = (
    b'<!DOCTYPE html>\n<html><body><a href="../../packages/x">x</a>\n'
    b"</body></html>\n<!--SERIAL 4242-->\n"
)
PAGE_JSON = b'{"meta":{"_last-serial":4242,"api-version":"1.1"},"name":"demo-pkg","files":[]}'
SMALL_BODY = bytes(range(256)) * 4
LARGE_BODY = bytes(i * 7919 % 251 for i in range(200_000))
HUGE_BODY = bytes(range(251)) * 16_000
BODIES = {SMALL: SMALL_BODY, LARGE: LARGE_BODY, HUGE: HUGE_BODY}
READY = "/pypi/ready-check"  # Mirror.start's probe: one access-log line per start
ZIP, GZIP = "application/zip", "application/x-gzip"


def _populate(repo: Path, mtime_ns: int) -> None:
    files = {
        repo / "simple" / "demo-pkg" / "index.html": PAGE_HTML,
        repo / "simple" / "demo-pkg" / "index.v1.json": PAGE_JSON,
        **{repo / "packages" / path: body for path, body in BODIES.items()},
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def mirror(tmp_path: Path, fake_pypi: FakePyPI) -> Iterator[Mirror]:
    """One server trusting 127.0.0.1 and 10/8 as proxies, over a populated repository."""
    mtime_ns = (int(time.time()) - 60) * 1_000_000_000  # fresh: no on-demand refresh due
    server = Mirror(
        tmp_path,
        fake_pypi.url,
        fake_pypi.files_url,
        trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"],
        timeouts={"read": "1s"},
    )
    _populate(server.repo, mtime_ns)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------ the raw client


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


@dataclass
class Reply:
    status_line: str
    headers: dict[str, str]  # lower-case names; a name sent twice fails the parse
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])


def _parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon and name == name.strip(), f"bad header line {line!r}"
        assert name.lower() not in headers, f"{name} twice in {head!r}"
        headers[name.lower()] = value.strip()
    return Reply(lines[0], headers, body)


def _exchange(
    port: int, requests: list[bytes], *, pipelined: bool = False, source: str = "127.0.0.1"
) -> tuple[list[Reply], bytes]:
    """Send the requests on one connection: every whole response, and whatever came after
    the last one before the connection closed (the server closes once we are done)."""
    responses: list[Reply] = []
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
                responses.append(_parse(reply))
            c.shutdown(socket.SHUT_WR)  # done: the server closes too
            while chunk := c.recv(65536):
                buffered += chunk
        except (OSError, TimeoutError):
            pass  # the server had closed the connection
    return responses, bytes(buffered)


def _request(target: str, method: str = "GET", version: str = "1.1", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/{version}"]
    if version == "1.1":
        lines.append("Host: 127.0.0.1")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _url(path: str) -> str:
    return f"/pypi/packages/{path}"


# ------------------------------------------------------------------------ expected answers


def _check_common(reply: Reply, version: str = "1.1") -> None:
    assert reply.status_line.startswith(f"HTTP/{version} "), reply.status_line
    assert reply.headers["server"].startswith("pypi-mirror/"), reply.headers
    age = time.time() - parsedate_to_datetime(reply.headers["date"]).timestamp()
    assert -2 < age < 60, reply.headers["date"]


def _same_bytes(got: bytes, expected: bytes) -> bool:
    """Equal bytes (compared without pytest printing megabytes when they are not)."""
    return hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()


def _last_modified(mirror: Mirror, local: Path | str) -> str:
    return formatdate(os.stat(mirror.repo / local).st_mtime, usegmt=True)


def _check_ok(
    reply: Reply,
    content_type: str,
    body: bytes,
    last_modified: str,
    *,
    head: bool = False,
    version: str = "1.1",
) -> None:
    """A 200 with the whole representation (headers only for HEAD)."""
    _check_common(reply, version)
    assert reply.status_line == f"HTTP/{version} 200 OK", reply.status_line
    headers = reply.headers
    assert headers["content-type"] == content_type, headers
    assert headers["content-length"] == str(len(body)), headers
    assert re.fullmatch(r'"[^"]+"', headers["etag"]), headers
    assert headers["last-modified"] == last_modified, headers
    assert headers["accept-ranges"] == "bytes", headers
    assert "content-range" not in headers, headers
    if head:
        assert reply.body == b""
    else:
        assert len(reply.body) == len(body), (len(reply.body), len(body))
        assert _same_bytes(reply.body, body)


def _check_page(
    mirror: Mirror, reply: Reply, content_type: str, *, head: bool = False, version: str = "1.1"
) -> None:
    is_json = content_type == V1_JSON
    local = "simple/demo-pkg/" + ("index.v1.json" if is_json else "index.html")
    body = PAGE_JSON if is_json else PAGE_HTML
    _check_ok(reply, content_type, body, _last_modified(mirror, local), head=head, version=version)
    assert reply.headers["x-pypi-last-serial"] == "4242", reply.headers
    assert reply.headers["vary"] == "Accept", reply.headers


def _check_file(
    mirror: Mirror, reply: Reply, path: str, *, head: bool = False, version: str = "1.1"
) -> None:
    kind = ZIP if path.endswith(".whl") else GZIP
    last_modified = _last_modified(mirror, f"packages/{path}")
    _check_ok(reply, kind, BODIES[path], last_modified, head=head, version=version)
    assert "x-pypi-last-serial" not in reply.headers


def _check_partial(reply: Reply, path: str, first: int, last: int) -> None:
    body = BODIES[path]
    _check_common(reply)
    assert reply.status_line == "HTTP/1.1 206 Partial Content", reply.status_line
    assert reply.headers["content-range"] == f"bytes {first}-{last}/{len(body)}"
    assert reply.headers["content-length"] == str(last - first + 1)
    assert reply.headers["content-type"] == (ZIP if path.endswith(".whl") else GZIP)
    assert "etag" in reply.headers and "last-modified" in reply.headers
    assert _same_bytes(reply.body, body[first : last + 1])


def _check_not_modified(reply: Reply, etag: str, last_modified: str) -> None:
    _check_common(reply)
    assert reply.status_line == "HTTP/1.1 304 Not Modified", reply.status_line
    assert reply.headers["etag"] == etag and reply.headers["last-modified"] == last_modified
    assert reply.headers.get("content-length", "0") == "0" and reply.body == b""


def _check_redirect(reply: Reply, status: int, location: str) -> None:
    _check_common(reply)
    assert reply.status == status, reply.status_line
    assert reply.headers["location"] == location, reply.headers
    assert reply.headers["content-length"] == "0" and reply.body == b""


def _entries(mirror: Mirror) -> list[dict[str, Any]]:
    """Access-log entries but the start-up probe's, once the server stopped (exit code 0)."""
    assert mirror.stop() == 0, mirror.stderr()[-3000:]
    entries = [orjson.loads(line) for line in mirror.access_log.read_bytes().splitlines()]
    return [entry for entry in entries if entry["path"] != READY]


def _check_log(
    entries: list[dict[str, Any]],
    requests: list[bytes],
    replies: list[Reply],
    client_ip: str | list[str],
) -> None:
    """One entry per request, in order: method, target, status, body bytes sent, client."""
    assert len(entries) == len(requests) == len(replies), (len(entries), len(requests))
    clients = [client_ip] * len(requests) if isinstance(client_ip, str) else client_ip
    for entry, request, reply, client in zip(entries, requests, replies, clients, strict=True):
        method, target, _ = request.split(b"\r\n", 1)[0].decode().split(" ")
        assert entry["method"] == method and entry["path"] == target, (entry, request)
        assert entry["status"] == reply.status, (entry, request)
        assert entry["bytes"] == len(reply.body), (entry, request)
        assert entry["client_ip"] == client, (entry, request)
        assert entry["proxied"] == "0", entry


# ------------------------------------------------------------------------ pages and files


def test_pages_and_files(mirror: Mirror) -> None:
    pip = "pip/24.0 {}"
    page, small, large, huge = PAGE, _url(SMALL), _url(LARGE), _url(HUGE)
    latest_json = "application/vnd.pypi.simple.latest+json, */*;q=0.1"
    # (request, content type or file path of the answer, HEAD, client address logged)
    plan: list[tuple[bytes, str, bool, str]] = [
        (_request(page), TEXT_HTML, False, "127.0.0.1"),
        (_request(page, Accept="text/html"), TEXT_HTML, False, "127.0.0.1"),
        (_request(page, Accept="*/*"), TEXT_HTML, False, "127.0.0.1"),
        (_request(page, Accept=V1_HTML), V1_HTML, False, "127.0.0.1"),
        (_request(page, Accept=V1_JSON), V1_JSON, False, "127.0.0.1"),
        (_request(page, Accept=latest_json), V1_JSON, False, "127.0.0.1"),
        (_request(page, Accept=f"{V1_JSON};q=0.5, {V1_HTML}"), V1_HTML, False, "127.0.0.1"),
        (_request(page + "?format=" + V1_JSON, Accept=V1_HTML), V1_JSON, False, "127.0.0.1"),
        (_request(page, "HEAD", Accept=V1_JSON), V1_JSON, True, "127.0.0.1"),
        (_request(page, "HEAD"), TEXT_HTML, True, "127.0.0.1"),
        (_request(small, User_Agent=pip), SMALL, False, "127.0.0.1"),
        (_request(small, "HEAD", User_Agent=pip), SMALL, True, "127.0.0.1"),
        (
            _request(large, User_Agent=pip, X_Forwarded_For="6.6.6.6, 10.1.1.1"),
            LARGE,
            False,
            "6.6.6.6",
        ),
        (_request(large, "HEAD", User_Agent=pip), LARGE, True, "127.0.0.1"),
        (_request(huge, User_Agent=pip), HUGE, False, "127.0.0.1"),
        (_request(huge, "HEAD"), HUGE, True, "127.0.0.1"),
        (
            _request(small, User_Agent=pip, X_Forwarded_For="2001:db8:1:2::7"),
            SMALL,
            False,
            "2001:db8:1:2::7",
        ),
        (
            _request(small, User_Agent="bandersnatch 6.0", X_Forwarded_For="7.7.7.7"),
            SMALL,
            False,
            "7.7.7.7",
        ),
        (
            _request(small, User_Agent=pip, Referer="https://example.org/"),
            SMALL,
            False,
            "127.0.0.1",
        ),
        (_request(page, Connection="close"), TEXT_HTML, False, "127.0.0.1"),
    ]
    requests = [request for request, _, _, _ in plan]

    def check(replies: list[Reply]) -> None:
        assert len(replies) == len(plan), [r.status_line for r in replies]
        for (request, wanted, head, _), reply in zip(plan, replies, strict=True):
            if wanted in BODIES:
                _check_file(mirror, reply, wanted, head=head)
            else:
                _check_page(mirror, reply, wanted, head=head)
            closing = b"Connection: close" in request
            assert reply.headers.get("connection") == ("close" if closing else None)

    # all on one connection, then each on a connection of its own
    replies, rest = _exchange(mirror.port, requests)
    check(replies)
    assert rest == b""
    etags = {reply.headers["etag"] for reply in replies}
    assert len(etags) == 5  # two pages, three files: each its own
    single: list[Reply] = []
    for request in requests:
        got, rest = _exchange(mirror.port, [request])
        assert rest == b"" and len(got) == 1
        single += got
    check(single)

    entries = _entries(mirror)
    clients = [client for _, _, _, client in plan]
    assert len(entries) == 2 * len(plan)
    for half, got in ((entries[: len(plan)], replies), (entries[len(plan) :], single)):
        _check_log(half, requests, got, client_ip=clients)
        assert all(entry["status"] == 200 for entry in half)
    referers = [e for e in entries if e["referer"]]
    assert [e["referer"] for e in referers] == ["https://example.org/"] * 2
    assert {e["user_agent"] for e in entries if e["path"] == small} >= {pip, "bandersnatch 6.0"}
    assert sorted(mirror.votes()) == sorted(
        [
            (SMALL, "127.0.0.0/24"),
            (LARGE, "6.6.6.0/24"),
            (HUGE, "127.0.0.0/24"),
            (SMALL, "2001:db8:1::/48"),
        ]
    )  # not the HEADs, not bandersnatch; repeats within the dedup window count once


def test_untrusted_peer_cannot_forge_forwarded_for(mirror: Mirror) -> None:
    request = _request(_url(SMALL), User_Agent="pip/24", X_Forwarded_For="9.9.9.9")
    replies, _ = _exchange(mirror.port, [request], source="127.0.0.2")
    assert len(replies) == 1
    _check_file(mirror, replies[0], SMALL)
    trusted = _request(_url(LARGE), User_Agent="pip/24", X_Forwarded_For="9.9.9.9, 10.2.3.4")
    replies_trusted, _ = _exchange(mirror.port, [trusted])
    _check_file(mirror, replies_trusted[0], LARGE)
    entries = _entries(mirror)
    _check_log(entries[:1], [request], replies, client_ip="127.0.0.2")
    _check_log(entries[1:], [trusted], replies_trusted, client_ip="9.9.9.9")
    assert sorted(mirror.votes()) == [(SMALL, "127.0.0.0/24"), (LARGE, "9.9.9.0/24")]


# ------------------------------------------------------------------------ 304, 206, 416


def test_conditional_and_range_requests(mirror: Mirror) -> None:
    first, _ = _exchange(mirror.port, [_request(_url(p)) for p in (SMALL, LARGE, HUGE)])
    first_page, _ = _exchange(mirror.port, [_request(PAGE)])
    assert len(first) == 3 and len(first_page) == 1
    etag = {path: r.headers["etag"] for path, r in zip(BODIES, first, strict=True)}
    modified = {path: r.headers["last-modified"] for path, r in zip(BODIES, first, strict=True)}
    page_etag, page_modified = (first_page[0].headers[h] for h in ("etag", "last-modified"))
    small, large, huge = _url(SMALL), _url(LARGE), _url(HUGE)
    long_ago = "Sat, 01 Jan 2000 00:00:00 GMT"
    # (request, check of its answer)
    plan: list[tuple[bytes, Any]] = [
        (
            _request(small, If_None_Match=etag[SMALL]),
            lambda r: _check_not_modified(r, etag[SMALL], modified[SMALL]),
        ),
        (
            _request(large, If_None_Match=f'"other", W/{etag[LARGE]}'),  # weak comparison
            lambda r: _check_not_modified(r, etag[LARGE], modified[LARGE]),
        ),
        (
            _request(PAGE, If_None_Match=page_etag),
            lambda r: _check_not_modified(r, page_etag, page_modified),
        ),
        (_request(small, If_None_Match='"x"'), lambda r: _check_file(mirror, r, SMALL)),
        (
            _request(large, If_Modified_Since=modified[LARGE]),
            lambda r: _check_not_modified(r, etag[LARGE], modified[LARGE]),
        ),
        (
            _request(huge, If_Modified_Since=modified[HUGE]),
            lambda r: _check_not_modified(r, etag[HUGE], modified[HUGE]),
        ),
        (_request(large, If_Modified_Since=long_ago), lambda r: _check_file(mirror, r, LARGE)),
        (  # If-None-Match wins over If-Modified-Since
            _request(small, If_None_Match='"x"', If_Modified_Since=modified[SMALL]),
            lambda r: _check_file(mirror, r, SMALL),
        ),
        (_request(small, Range="bytes=0-9"), lambda r: _check_partial(r, SMALL, 0, 9)),
        (
            _request(large, Range="bytes=-16384"),
            lambda r: _check_partial(r, LARGE, 200_000 - 16384, 199_999),
        ),
        (_request(large, Range="bytes=0-9"), lambda r: _check_partial(r, LARGE, 0, 9)),
        (
            _request(large, Range="bytes=150000-"),
            lambda r: _check_partial(r, LARGE, 150_000, 199_999),
        ),
        (
            _request(huge, Range="bytes=1000000-"),
            lambda r: _check_partial(r, HUGE, 1_000_000, len(HUGE_BODY) - 1),
        ),
        (
            _request(huge, Range="bytes=-16384"),
            lambda r: _check_partial(r, HUGE, len(HUGE_BODY) - 16384, len(HUGE_BODY) - 1),
        ),
        (_request(small, Range="bytes=1000-5000"), lambda r: _check_partial(r, SMALL, 1000, 1023)),
        (_request(small, Range="bytes=1024-"), lambda r: _check_unsatisfiable(r, SMALL)),
        (_request(large, Range="bytes=999999-"), lambda r: _check_unsatisfiable(r, LARGE)),
        (_request(small, Range="bytes=-0"), lambda r: _check_unsatisfiable(r, SMALL)),
        (
            _request(large, Range="bytes=0-9", If_Range='"not-the-etag"'),
            lambda r: _check_file(mirror, r, LARGE),
        ),
        (
            _request(small, Range="bytes=0-9", If_Range='"not-the-etag"'),
            lambda r: _check_file(mirror, r, SMALL),
        ),
        (
            _request(large, Range="bytes=10-19", If_Range=etag[LARGE]),
            lambda r: _check_partial(r, LARGE, 10, 19),
        ),
        (_request(PAGE, Connection="close"), lambda r: _check_page(mirror, r, TEXT_HTML)),
    ]
    requests = [request for request, _ in plan]
    all_replies: list[Reply] = []
    for pipelined in (False, True):
        replies, rest = _exchange(mirror.port, requests, pipelined=pipelined)
        assert len(replies) == len(plan), [r.status_line for r in replies]
        for (request, check), reply in zip(plan, replies, strict=True):
            try:
                check(reply)
            except AssertionError as error:
                raise AssertionError(f"{request!r}: {error}") from error
        assert rest == b""
        all_replies += replies
    entries = _entries(mirror)[4:]
    _check_log(entries, requests * 2, all_replies, client_ip="127.0.0.1")


def _check_unsatisfiable(reply: Reply, path: str) -> None:
    _check_common(reply)
    assert reply.status == 416, reply.status_line  # the reason phrase carries no meaning
    assert reply.headers["content-range"] == f"bytes */{len(BODIES[path])}", reply.headers
    assert reply.headers["content-length"] == str(len(reply.body))


# ------------------------------------------------------------------------ connections


def test_keep_alive_sequence_and_pipelined(mirror: Mirror) -> None:
    small = _url(SMALL)
    plan: list[tuple[bytes, Any]] = [
        (_request(PAGE), lambda r: _check_page(mirror, r, TEXT_HTML)),
        (_request(small, User_Agent="pip/24"), lambda r: _check_file(mirror, r, SMALL)),
        (_request(small, Range="bytes=0-9"), lambda r: _check_partial(r, SMALL, 0, 9)),
        (_request(PAGE), lambda r: _check_page(mirror, r, TEXT_HTML)),
        (_request(PAGE + "?format=" + V1_JSON), lambda r: _check_page(mirror, r, V1_JSON)),
        (_request("/pypi/simple/Demo_Pkg/"), lambda r: _check_redirect(r, 301, PAGE)),
        (_request(_url(HUGE)), lambda r: _check_file(mirror, r, HUGE)),
        (_request("/pypi/nothing-here"), lambda r: r.status == 404 or pytest.fail(str(r))),
        (_request(small, Connection="close"), lambda r: _check_file(mirror, r, SMALL)),
    ]
    requests = [request for request, _ in plan]
    all_replies: list[Reply] = []
    for pipelined in (False, True):
        replies, rest = _exchange(mirror.port, requests, pipelined=pipelined)
        assert len(replies) == len(plan), [r.status_line for r in replies]
        for (_, check), reply in zip(plan, replies, strict=True):
            check(reply)
        assert replies[-1].headers["connection"] == "close"
        assert all("connection" not in r.headers for r in replies[:-1])
        assert rest == b""
        all_replies += replies

    # answers of every kind pipelined, the huge ones more than the socket buffers take
    mixed = [_request(PAGE), _request(_url(LARGE)), _request(small, "HEAD"), _request(_url(HUGE))]
    mixed = mixed * 3 + [_request(PAGE, Connection="close")]
    replies, rest = _exchange(mirror.port, mixed, pipelined=True)
    assert len(replies) == len(mixed) and rest == b""
    for index, reply in enumerate(replies):
        kind = index % 4 if index < 12 else 0
        if kind == 0:
            _check_page(mirror, reply, TEXT_HTML)
        else:
            _check_file(mirror, reply, (LARGE, SMALL, HUGE)[kind - 1], head=kind == 2)
    entries = _entries(mirror)
    _check_log(entries, requests * 2 + mixed, all_replies + replies, client_ip="127.0.0.1")


def test_http10_and_connection_close(mirror: Mirror) -> None:
    small = _url(SMALL)
    sent: list[bytes] = []
    answered: list[Reply] = []

    def exchange(requests: list[bytes]) -> list[Reply]:
        replies, rest = _exchange(mirror.port, requests)
        assert rest == b""
        sent.extend(requests[: len(replies)])
        answered.extend(replies)
        return replies

    # HTTP/1.0 without keep-alive: one answer, no Connection header, then the server closes
    replies = exchange([_request(PAGE, version="1.0"), _request(PAGE, version="1.0")])
    assert len(replies) == 1, [r.status_line for r in replies]
    _check_page(mirror, replies[0], TEXT_HTML, version="1.0")
    assert "connection" not in replies[0].headers
    # HTTP/1.0 keep-alive is echoed and kept; a request without it is the last one
    keep = _request(small, version="1.0", Connection="keep-alive")
    plain = _request(small, version="1.0")
    replies = exchange([keep, keep, _request(PAGE, "HEAD", "1.0", Connection="keep-alive"), plain])
    assert len(replies) == 4, [r.status_line for r in replies]
    for reply in replies[:2]:
        _check_file(mirror, reply, SMALL, version="1.0")
        assert reply.headers["connection"] == "keep-alive"
    _check_page(mirror, replies[2], TEXT_HTML, head=True, version="1.0")
    assert replies[2].headers["connection"] == "keep-alive"
    _check_file(mirror, replies[3], SMALL, version="1.0")
    assert "connection" not in replies[3].headers
    replies = exchange([plain, plain])
    assert len(replies) == 1
    # HTTP/1.1 Connection: close is answered with it, then the server closes
    replies = exchange([_request(small, Connection="close"), _request(small)])
    assert len(replies) == 1
    _check_file(mirror, replies[0], SMALL)
    assert replies[0].headers["connection"] == "close"
    replies = exchange([_request(_url(LARGE), Connection="close"), _request(small)])
    assert len(replies) == 1
    _check_file(mirror, replies[0], LARGE)
    assert replies[0].headers["connection"] == "close"
    _check_log(_entries(mirror), sent, answered, client_ip="127.0.0.1")


def test_redirects_406_405_and_unusual_requests(mirror: Mirror, fake_pypi: FakePyPI) -> None:
    small = _url(SMALL)
    remote = SMALL[:-4] + ".zip"  # not held locally: 302 to the file host
    follow = _request(PAGE, Connection="close")
    # (request, expected status, whether the connection stays open for ``follow``)
    cases: list[tuple[bytes, int, bool]] = [
        (_request(PAGE, Accept="image/png"), 406, True),
        (_request(PAGE, Accept="text/html;q=0"), 406, True),
        (_request("/pypi/simple"), 301, True),
        (_request("/pypi/simple/demo-pkg"), 301, True),
        (_request("/pypi/simple/Demo_Pkg/?format=text/html"), 301, True),
        (_request("/pypi/simple/Demo.Pkg"), 301, True),
        (_request(small, If_None_Match='"x"'), 200, True),
        (_request(small, "POST"), 405, True),
        (_request(PAGE, "POST", Content_Length="3") + b"a=b", 405, True),
        (_request(small, "DELETE"), 405, True),
        (_request(_url(remote), User_Agent="pip/24"), 302, True),
        (_request(small, X_Big="a" * 9000), 431, False),
        (_request(small, Transfer_Encoding="chunked") + b"0\r\n\r\n", 200, True),
        (b"GET " + small.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\r\n\r\n", 200, True),
        (b"GET " + small.encode() + b" HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, False),
    ]
    statuses: list[int] = []
    failures: list[str] = []
    for request, status, stays_open in cases:
        replies, rest = _exchange(mirror.port, [request, follow])
        what = request[:60]
        got = [reply.status for reply in replies]
        statuses += got
        if got != ([status, 200] if stays_open else [status]) or rest != b"":
            failures.append(f"{what!r}: got {got} {rest[:80]!r}")
            continue
        reply = replies[0]
        _check_common(reply)
        if stays_open:
            _check_page(mirror, replies[1], TEXT_HTML)
            assert "connection" not in reply.headers, what
        else:
            assert reply.headers["connection"] == "close", what
        if status == 200:
            _check_file(mirror, reply, SMALL)
        elif status == 406:
            assert reply.headers["vary"] == "Accept"
            assert reply.headers["content-type"] == "text/plain; charset=utf-8"
            assert all(t.encode() in reply.body for t in (TEXT_HTML, V1_HTML, V1_JSON))
        elif status == 405:
            assert reply.headers["allow"] == "GET, HEAD", reply.headers
        elif status == 302:
            _check_redirect(reply, 302, f"{fake_pypi.files_url}/packages/{remote}")
    redirects = [
        _exchange(mirror.port, [request])[0][0].headers["location"]
        for request, status, _ in cases
        if status == 301
    ]
    assert redirects == [
        "/pypi/simple/",
        PAGE,
        PAGE + "?format=text/html",
        PAGE,
    ]
    assert not failures, failures
    entries = _entries(mirror)
    logged = [entry["status"] for entry in entries][: len(statuses)]
    assert logged == statuses, (logged, statuses)
    assert len(entries) == len(statuses) + len(redirects)
    assert sorted(mirror.votes()) == sorted([(SMALL, "127.0.0.0/24"), (remote, "127.0.0.0/24")])


def test_absolute_form_target_is_accepted(mirror: Mirror) -> None:
    """RFC 9112 §3.2.2: "a server MUST accept the absolute-form in requests"; the Host header
    is then ignored for the target's authority."""
    small = _url(SMALL).encode()
    requests = [
        b"GET http://127.0.0.1" + small + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://mirror.example:8080/pypi/simple/demo-pkg/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    replies, _ = _exchange(mirror.port, requests)
    assert [reply.status for reply in replies] == [200, 200], [r.status_line for r in replies]
    _check_file(mirror, replies[0], SMALL)
    _check_page(mirror, replies[1], TEXT_HTML)


def test_slow_head_is_answered_408_after_read_timeout(mirror: Mirror) -> None:
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as conn:
        conn.sendall(_request(PAGE))
        buffered = bytearray()
        first = _read_response(conn, buffered, False)
        assert first is not None
        _check_page(mirror, _parse(first), TEXT_HTML)
        started = time.monotonic()
        conn.sendall(b"GET /pypi/simple/demo-pkg/ HTTP/1.1\r\nHost: x\r\n")  # never finished
        raw = _read_response(conn, buffered, False)
        waited = time.monotonic() - started
        assert raw is not None, "closed without an answer"
        reply = _parse(raw)
        assert reply.status == 408 and reply.headers["connection"] == "close", reply
        assert 0.8 < waited < 4, waited  # timeouts.read is 1 s
        assert conn.recv(100) == b""  # then closed


def test_shutdown_keeps_every_vote(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    mirror = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, trusted_proxies=["127.0.0.1/32"])
    _populate(mirror.repo, time.time_ns())
    mirror.start()
    try:
        requests = [
            _request(_url(SMALL), User_Agent="pip", X_Forwarded_For=f"10.0.{i}.1")
            for i in range(100)
        ]
        replies, rest = _exchange(mirror.port, requests, pipelined=True)
        assert len(replies) == 100 and rest == b""
        assert all(reply.body == SMALL_BODY for reply in replies)
    finally:
        assert mirror.stop() == 0
    assert sorted(mirror.votes()) == sorted((SMALL, f"10.0.{i}.0/24") for i in range(100))


# ------------------------------------------------------------------------ shutdown bounds

STALLED = "ab/cd/" + "5" * 60 + "/stall_pkg-1.0.tar.gz"  # 64 MB: never fits the socket buffers
INFLIGHT = "ab/cd/" + "6" * 60 + "/slow_pkg-1.0.tar.gz"  # 32 MB, read after a pause
INFLIGHT_BODY = bytes(range(256)) * (32 * 4096)


def _shutdown_mirror(tmp_path: Path, fake_pypi: FakePyPI) -> Mirror:
    mirror = Mirror(
        tmp_path,
        fake_pypi.url,
        fake_pypi.files_url,
        trusted_proxies=["127.0.0.1/32"],
        timeouts={"write": "600s"},
    )
    _populate(mirror.repo, time.time_ns())
    stalled = mirror.repo / "packages" / STALLED
    stalled.parent.mkdir(parents=True, exist_ok=True)
    with open(stalled, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    (mirror.repo / "packages" / INFLIGHT).parent.mkdir(parents=True, exist_ok=True)
    (mirror.repo / "packages" / INFLIGHT).write_bytes(INFLIGHT_BODY)
    return mirror.start()


def _stalled_client(port: int) -> socket.socket:
    """Asks for the 64 MB file with a tiny receive buffer and never reads."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.settimeout(10)
    conn.connect(("127.0.0.1", port))
    conn.sendall(_request(_url(STALLED), User_Agent="pip/24"))
    return conn


def _refused(port: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_grace_is_bounded(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    """In-flight answers get up to 30 s; a client that stopped reading (under a 600 s write
    timeout) is then cut; the exit is clean."""
    mirror = _shutdown_mirror(tmp_path, fake_pypi)
    assert mirror.process is not None
    stalled = _stalled_client(mirror.port)
    inflight = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inflight.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    inflight.settimeout(20)
    try:
        inflight.connect(("127.0.0.1", mirror.port))
        inflight.sendall(_request(_url(INFLIGHT), User_Agent="pip/24"))
        buffered = bytearray(inflight.recv(65536))
        assert buffered.startswith(b"HTTP/1.1 200 OK\r\n")
        time.sleep(0.5)  # both answers are now waiting for their client
        mirror.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert _refused(mirror.port, 3), "still accepting connections after SIGTERM"
        # the in-flight answer completes during the grace
        head_end = buffered.find(b"\r\n\r\n")
        while head_end < 0:
            buffered += inflight.recv(65536)
            head_end = buffered.find(b"\r\n\r\n")
        reply = _parse(bytes(buffered[: head_end + 4]))
        assert reply.headers["content-length"] == str(len(INFLIGHT_BODY))
        assert "connection" not in reply.headers  # it was sent before the signal
        digest = hashlib.sha256(buffered[head_end + 4 :])
        received = len(buffered) - head_end - 4
        while chunk := inflight.recv(1 << 20):
            digest.update(chunk)
            received += len(chunk)
        completed = time.monotonic() - signalled
        assert received == len(INFLIGHT_BODY), received
        assert digest.digest() == hashlib.sha256(INFLIGHT_BODY).digest()
        assert mirror.process.poll() is None, "exited before the grace for in-flight answers"
        code = mirror.process.wait(40)
        elapsed = time.monotonic() - signalled
    finally:
        inflight.close()
        stalled.close()
        mirror.stop()
    assert code == 0, mirror.stderr()[-3000:]
    assert completed < 10, completed
    assert elapsed < 34, f"exited {elapsed:.1f} s after SIGTERM (grace is 30 s)"
    assert "Traceback" not in mirror.stderr()
    entries = _entries(mirror)
    assert [(e["path"], e["status"], e["bytes"]) for e in entries if INFLIGHT in e["path"]] == [
        (_url(INFLIGHT), 200, len(INFLIGHT_BODY))
    ]


def test_second_signal_cuts_at_once_and_keeps_votes(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    mirror = _shutdown_mirror(tmp_path, fake_pypi)
    assert mirror.process is not None
    stalled = _stalled_client(mirror.port)
    try:
        time.sleep(0.5)
        voters = [
            _request(_url(SMALL), User_Agent="pip/24", X_Forwarded_For=f"203.0.{i}.9")
            for i in range(20)
        ]
        replies, _ = _exchange(mirror.port, voters, pipelined=True)
        assert [reply.status for reply in replies] == [200] * 20
        mirror.signal(signal.SIGTERM)  # at once: the votes may still be queued
        signalled = time.monotonic()
        time.sleep(1)
        assert mirror.process.poll() is None, "did not wait for the stalled answer"
        mirror.signal(signal.SIGINT)
        code = mirror.process.wait(40)
        elapsed = time.monotonic() - signalled
    finally:
        stalled.close()
        mirror.stop()
    assert code == 0, mirror.stderr()[-3000:]
    assert elapsed < 8, f"exited {elapsed:.1f} s after SIGTERM, {elapsed - 1:.1f} s after SIGINT"
    assert "Traceback" not in mirror.stderr()
    votes = set(mirror.votes())
    assert {(SMALL, f"203.0.{i}.0/24") for i in range(20)} <= votes, sorted(votes)


# ------------------------------------------------------------------------ hang-ups, odd bytes


def _download_and_hang_up(port: int, index: int, errors: list[str]) -> None:
    try:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with conn:
            if index % 2:  # the server is mid-sendfile when the client leaves
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if index % 3 == 0:  # a reset instead of a clean close
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.settimeout(10)
            conn.connect(("127.0.0.1", port))
            conn.sendall(_request(_url(LARGE), User_Agent="pip/24"))
            got = b""
            while len(got) < 3000 + 1000 * (index % 5):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                got += chunk
            if not got.startswith(b"HTTP/1.1 200 OK\r\n"):
                errors.append(f"{index}: {got[:60]!r}")
    except OSError as error:
        errors.append(f"{index}: {error!r}")


def test_clients_hanging_up_mid_download(mirror: Mirror) -> None:
    errors: list[str] = []
    threads = [
        threading.Thread(target=_download_and_hang_up, args=(mirror.port, i, errors))
        for i in range(30)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    time.sleep(0.5)  # let the server notice every hang-up
    replies, _ = _exchange(mirror.port, [_request(_url(LARGE), Connection="close")])
    assert len(replies) == 1
    _check_file(mirror, replies[0], LARGE)
    entries = _entries(mirror)
    stderr = mirror.stderr()
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-3000:]
    assert len(entries) == 31, entries
    assert all(e["path"] == _url(LARGE) and e["status"] == 200 for e in entries), entries
    assert all(0 <= e["bytes"] <= len(LARGE_BODY) for e in entries), entries
    assert entries[-1]["bytes"] == len(LARGE_BODY)


def test_non_utf8_user_agent(mirror: Mirror) -> None:
    request = (
        f"GET {_url(SMALL)} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"User-Agent: \xff\xfe pip\r\nConnection: close\r\n\r\n"
    )
    replies, rest = _exchange(mirror.port, [request])
    assert len(replies) == 1 and rest == b""
    _check_file(mirror, replies[0], SMALL)
    entries = _entries(mirror)
    assert len(entries) == 1, entries
    assert entries[0]["status"] == 200 and entries[0]["bytes"] == len(SMALL_BODY)
    assert entries[0]["user_agent"] == "\\xff\\xfe pip", entries[0]
    assert mirror.votes() == [(SMALL, "127.0.0.0/24")]


# ------------------------------------------------------------------------ timeouts.write

SLOW = "ab/cd/" + "7" * 60 + "/slow_reader-1.0.tar.gz"
SLOW_BODY = bytes(i * 31 % 253 for i in range(65536)) * 256  # 16 MB
SLOW_SIZE = len(SLOW_BODY)


def _write_timeout_mirror(tmp_path: Path, fake_pypi: FakePyPI) -> Mirror:
    mirror = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, timeouts={"write": "1s"})
    _populate(mirror.repo, time.time_ns())
    (mirror.repo / "packages" / SLOW).parent.mkdir(parents=True, exist_ok=True)
    (mirror.repo / "packages" / SLOW).write_bytes(SLOW_BODY)
    return mirror.start()


def _download(port: int, pause_after: int | None) -> tuple[bytes, bytes, float | None]:
    """GET the 16 MB file through a 64 KB receive buffer, reading 64 KB every 10 ms (about
    6 MB/s: never a gap near timeouts.write). With ``pause_after``, stop reading for 3 s
    once that many bytes arrived. Returns the head, the body bytes received until the
    server closed or cut, and when (monotonic) the pause began."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    conn.settimeout(10)
    paused_at = None
    data = bytearray()
    with conn:
        conn.connect(("127.0.0.1", port))
        conn.sendall(_request(_url(SLOW), Connection="close"))
        try:
            while chunk := conn.recv(65536):
                data += chunk
                if pause_after is not None and paused_at is None and len(data) > pause_after:
                    paused_at = time.monotonic()
                    time.sleep(3)
                time.sleep(0.01)
        except ConnectionResetError:
            pass  # cut
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body, paused_at


def test_steady_slow_reader_is_not_cut_by_write_timeout(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    """timeouts.write bounds a stalled send: a client that keeps reading, however slowly
    overall, is never cut (nginx's send_timeout: between two successive writes)."""
    mirror = _write_timeout_mirror(tmp_path, fake_pypi)
    started = time.monotonic()
    head, body, _ = _download(mirror.port, None)
    took = time.monotonic() - started
    entries = _entries(mirror)
    received = len(body)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert took > 1.5  # slower than the write timeout overall, as intended
    assert received == SLOW_SIZE, (
        f"cut after {received} of {SLOW_SIZE} bytes, {took:.1f} s, while reading "
        f"every 10 ms (timeouts.write 1 s); access log: {entries[-1]}"
    )
    assert _same_bytes(body, SLOW_BODY)
    assert [(e["status"], e["bytes"]) for e in entries] == [(200, SLOW_SIZE)]


def test_stalled_reader_is_cut_and_its_bytes_logged(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    mirror = _write_timeout_mirror(tmp_path, fake_pypi)
    started = time.monotonic()
    head, body, paused_at = _download(mirror.port, 6 * 1024 * 1024)
    entries = _entries(mirror)
    stderr = mirror.stderr()
    received = len(body)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and paused_at is not None
    assert received < SLOW_SIZE, "not cut while the client read nothing for 3 s"
    assert _same_bytes(body, SLOW_BODY[:received])
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-3000:]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["status"] == 200 and entry["path"] == _url(SLOW)
    assert entry["duration_ms"] < (paused_at - started + 2.5) * 1000, entry
    # every byte the client received was sent: the log must not count fewer
    assert received <= entry["bytes"] < SLOW_SIZE, (
        f"the client received {received} bytes, the access log says {entry['bytes']}"
    )
