"""Hostile requests: a clean 4xx, nothing outside the repo opened, no request to any host
but the configured upstream paths."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path

import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http

SECRET = b"top secret outside the mirror"


@pytest.fixture
def mirror(tmp_path: Path, fake_pypi: FakePyPI) -> Mirror:
    fake_pypi.add_wheel("demo", "1.0")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, fallback={"default": "proxy"}) as m:
        yield m


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


HOSTILE_PATHS = [
    "/pypi/packages/../../secret.txt",
    "/pypi/packages/..%2F..%2Fsecret.txt",
    "/pypi/packages/%2e%2e/%2e%2e/secret.txt",
    "/pypi/packages/ab/cd/" + "0" * 60 + "/..%2F..%2F..%2F..%2Fsecret.txt",
    "/pypi/packages//etc/passwd",
    "/pypi/packages/%2Fetc%2Fpasswd",
    "/pypi/packages/ab/cd/" + "0" * 60 + "/" + "a" * 5000 + ".whl",
    "/pypi/packages/ab/cd/" + "0" * 60 + "/x.whl%00.txt",
    "/pypi/simple/..%2F..%2Fsecret.txt/",
    "/pypi/simple/" + "a" * 300 + "/",
    "/pypi/simple/%00/",
    "/pypi/..%2F..%2Fsecret.txt/json",
    "/pypi/../secret.txt",
    "/secret.txt",
    "/pypi/web/../../../secret.txt",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_traversal_and_malformed_paths(mirror: Mirror, fake_pypi: FakePyPI, path: str) -> None:
    fake_pypi.clear_requests()
    reply = raw_request(
        mirror.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    status = int(reply.split(b" ", 2)[1])
    assert 300 <= status < 500, reply[:200]
    assert SECRET not in reply
    # whatever reached the upstream went to its own API or file paths, nothing else
    for record in fake_pypi.requests:
        assert record.path.startswith(("/pypi/", "/files/packages/", "/simple/")), record.path
        assert ".." not in record.path and "secret" not in record.path


def test_web_redirect_stays_on_upstream(mirror: Mirror, fake_pypi: FakePyPI) -> None:
    reply = http(f"{mirror.base}/web/project/demo/")
    assert reply.headers["location"].startswith(fake_pypi.url + "/")


def test_symlink_inside_the_tier_is_not_followed(mirror: Mirror, tmp_path: Path) -> None:
    path = "ab/cd/" + "1" * 60 + "/evil-1.0.tar.gz"
    link = mirror.repo / "packages" / path
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "secret.txt")
    reply = http(f"{mirror.base}/packages/{path}")
    assert SECRET not in reply.body


def test_bogus_ranges(mirror: Mirror, fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.files("demo")[0]
    target = mirror.repo / "packages" / wheel.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(wheel.content)
    url = f"{mirror.base}/packages/{wheel.path}"
    for header in ["bytes=", "bytes=-", "bytes=5-2", "chars=0-1", "bytes=0-1,3-4", "bytes=x-y",
                   "bytes=99999999999999999999-"]:  # fmt: skip
        reply = http(url, headers={"Range": header})
        assert reply.status in (200, 416), header
        if reply.status == 200:
            assert reply.body == wheel.content


def test_forged_forwarded_for_from_untrusted_peer(mirror: Mirror, fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.files("demo")[0]
    http(f"{mirror.base}/packages/{wheel.path}", headers={"X-Forwarded-For": "1.2.3.4"})
    assert mirror.wait_for(mirror.votes) == [(wheel.path, "127.0.0.0/24")]


def test_huge_headers_are_refused_cleanly(mirror: Mirror) -> None:
    big = "x" * 20000
    reply = raw_request(
        mirror.port, f"GET /pypi/simple/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode()
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply[:100]
    many = "".join(f"X-H{i}: v\r\n" for i in range(500))
    reply = raw_request(
        mirror.port, f"GET /pypi/simple/ HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode()
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply[:100]
    # and the server is still fine afterwards
    assert http(mirror.simple + "demo/").status == 200


def test_methods_other_than_get_and_head(mirror: Mirror, fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.files("demo")[0]
    assert http(f"{mirror.base}/packages/{wheel.path}", method="POST").status == 405
    assert http(mirror.simple + "demo/", method="DELETE").status == 405


def test_absolute_form_request_target_is_not_a_proxy(mirror: Mirror, fake_pypi: FakePyPI) -> None:
    fake_pypi.clear_requests()
    reply = raw_request(
        mirror.port,
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply[:100]
    assert fake_pypi.requests == []


def test_slow_request_head_is_cut_off(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, timeouts={"read": "1s"}) as mirror:
        with socket.create_connection(("127.0.0.1", mirror.port), timeout=10) as conn:
            conn.sendall(b"GET /pypi/simple/ HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            reply = conn.recv(1000)
            assert time.monotonic() - started < 9
            assert reply.startswith(b"HTTP/1.1 408 ")  # answered, then closed
            assert b"Connection: close" in reply
            assert conn.recv(100) == b""
        # a normal client is unaffected
        assert http(mirror.base + "/simple/nothing/").status in (404, 502)


def test_client_that_stops_reading_is_cut_off(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, timeouts={"write": "1s"}) as mirror:
        path = "ab/cd/" + "2" * 60 + "/big-1.0.tar.gz"
        target = mirror.repo / "packages" / path
        target.parent.mkdir(parents=True)
        target.write_bytes(os.urandom(64 * 1024 * 1024))
        with socket.socket() as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.settimeout(15)
            conn.connect(("127.0.0.1", mirror.port))
            conn.sendall(f"GET /pypi/packages/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(3)  # never read: the server must give up after timeouts.write
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := conn.recv(1 << 20):
                    received += len(chunk)
        assert received < 64 * 1024 * 1024
        entries = mirror.log_entries()
        assert entries and entries[-1]["path"].endswith("big-1.0.tar.gz")
