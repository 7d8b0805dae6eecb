"""The mirror as a drop-in for PyPI's base URL: PyPI's URL layout under the prefix, XML-RPC,
JSON API file URLs back to the mirror, PyPI's headers, canonical page URLs only."""

from __future__ import annotations

import socket
import sqlite3
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, Reply, http

PAGE_CACHE = "max-age=600, public"
FILE_CACHE = "max-age=365000000, immutable, public"


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("demo-pkg", "1.0", requires_python=">=3.8")
    fake_pypi.add_sdist("demo-pkg", "1.0")
    fake_pypi.add_wheel("demo-pkg", "1.1")
    fake_pypi.add_wheel("pypi", "2.0")
    return fake_pypi


@pytest.fixture
def mirror(tmp_path: Path, upstream: FakePyPI) -> Iterator[Mirror]:
    with Mirror(
        tmp_path, upstream.url, upstream.files_url, trusted_proxies=["127.0.0.1/32"]
    ) as running:
        yield running


def raw_get(port: int, target: str, headers: dict[str, str], source: str) -> Reply:
    """One GET from ``source`` (a loopback address), with exactly these headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall((head + "Connection: close\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(status, parsed, body)


def file_urls(doc: dict) -> list[str]:
    urls = [f["url"] for f in doc.get("urls", [])]
    for files in doc.get("releases", {}).values():
        urls += [f["url"] for f in files]
    return urls


# -- URL layout ------------------------------------------------------------------------------


def test_pypi_json_layout_and_seed_layout(mirror: Mirror, upstream: FakePyPI) -> None:
    for url in (f"{mirror.base}/pypi/demo-pkg/json", f"{mirror.base}/demo-pkg/json"):
        reply = http(url)
        assert reply.status == 200, url
        doc = reply.json()
        assert doc["info"]["name"] == "demo-pkg"
        assert set(doc["releases"]) == {"1.0", "1.1"}
        assert reply.headers["x-pypi-last-serial"] == str(upstream.project_serial("demo-pkg"))
        assert reply.headers["access-control-allow-origin"] == "*"
    # a project literally named "pypi"
    for url in (f"{mirror.base}/pypi/pypi/json", f"{mirror.base}/pypi/json"):
        reply = http(url)
        assert reply.status == 200, url
        assert reply.json()["info"]["name"] == "pypi"
    release = http(f"{mirror.base}/pypi/pypi/2.0/json")
    assert release.status == 200
    assert release.json()["info"]["version"] == "2.0"
    # non-normalised names: one 301, in the layout asked
    moved = http(f"{mirror.base}/pypi/Demo_Pkg/1.1/json?x=1")
    assert moved.status == 301
    assert moved.headers["location"] == "/pypi/pypi/demo-pkg/1.1/json?x=1"
    assert http(f"{mirror.base}/Demo_Pkg/json").headers["location"] == "/pypi/demo-pkg/json"
    assert http(f"{mirror.base}/pypi/no-such-thing/json").status == 404


def test_release_json_held_and_fetched(mirror: Mirror, upstream: FakePyPI) -> None:
    assert http(f"{mirror.base}/pypi/demo-pkg/json").status == 200
    upstream.clear_requests()
    latest = http(f"{mirror.base}/pypi/demo-pkg/1.1/json")
    assert latest.status == 200
    doc = latest.json()
    assert doc["info"]["version"] == "1.1"
    assert "releases" not in doc
    assert [f["filename"] for f in doc["urls"]] == [
        f.filename for f in upstream.files("demo-pkg") if f.version == "1.1"
    ]
    assert latest.headers["x-pypi-last-serial"] == str(upstream.project_serial("demo-pkg"))
    assert upstream.requests_matching("/1.1/json") == []  # served from the held document
    older = http(f"{mirror.base}/pypi/demo-pkg/1.0/json")
    assert older.status == 200
    assert older.json()["info"]["version"] == "1.0"
    assert len(upstream.requests_matching("/pypi/demo-pkg/1.0/json")) == 1
    assert all(
        u.startswith(f"http://127.0.0.1:{mirror.port}/packages/") for u in file_urls(older.json())
    )
    assert http(f"{mirror.base}/pypi/demo-pkg/1.0/json").json() == older.json()
    assert len(upstream.requests_matching("/pypi/demo-pkg/1.0/json")) == 1  # reused
    assert http(f"{mirror.base}/pypi/demo-pkg/9.9/json").status == 404


@pytest.mark.parametrize("version", ["..", "1.0%2F..%2Fx", "-1", "1..0", "a b", "1.0%00"])
def test_malformed_version_never_reaches_upstream(
    mirror: Mirror, upstream: FakePyPI, version: str
) -> None:
    upstream.clear_requests()
    reply = http(f"{mirror.base}/pypi/demo-pkg/{version.replace(' ', '%20')}/json")
    assert reply.status in (400, 404)
    assert [
        r for r in upstream.requests if "/json" in r.path and "demo-pkg/json" not in r.path
    ] == []


# -- JSON file URLs lead back to the mirror ------------------------------------------------


def test_json_urls_from_host(mirror: Mirror) -> None:
    doc = http(f"{mirror.base}/pypi/demo-pkg/json").json()
    urls = file_urls(doc)
    assert len(urls) == 4  # urls (1.1) + releases (3)
    assert all(u.startswith(f"http://127.0.0.1:{mirror.port}/packages/") for u in urls)
    for url in urls:  # each one answers
        assert http(url).status in (200, 302)
    other = http(f"{mirror.base}/pypi/demo-pkg/json", headers={"Host": "mirror.test:8443"}).json()
    assert all(u.startswith("http://mirror.test:8443/packages/") for u in file_urls(other))
    bad = http(f"{mirror.base}/pypi/demo-pkg/json", headers={"Host": "evil.test/x?"})
    assert bad.status == 400


def test_forwarded_headers_only_from_trusted_peers(mirror: Mirror) -> None:
    forwarded = {
        "Host": "inner:8080",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "mirror.example.org",
    }
    target = "/pypi/pypi/demo-pkg/json"
    trusted = raw_get(mirror.port, target, forwarded, "127.0.0.1")
    assert trusted.status == 200
    urls = file_urls(orjson.loads(trusted.body))
    assert urls and all(u.startswith("https://mirror.example.org/packages/") for u in urls)
    untrusted = raw_get(mirror.port, target, forwarded, "127.0.0.2")
    assert untrusted.status == 200
    urls = file_urls(orjson.loads(untrusted.body))
    assert urls and all(u.startswith("http://inner:8080/packages/") for u in urls)
    bad_proto = raw_get(
        mirror.port, target, {**forwarded, "X-Forwarded-Proto": "gopher"}, "127.0.0.1"
    )
    assert bad_proto.status == 400


def test_public_url(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(
        tmp_path, upstream.url, upstream.files_url, public_url="https://mirror.example.org/"
    ) as mirror:
        reply = http(f"{mirror.base}/pypi/demo-pkg/json", headers={"Host": "whatever"})
        urls = file_urls(reply.json())
        assert urls and all(u.startswith("https://mirror.example.org/packages/") for u in urls)
        again = http(
            f"{mirror.base}/pypi/demo-pkg/json", headers={"If-None-Match": reply.headers["etag"]}
        )
        assert again.status == 304


# -- headers ------------------------------------------------------------------------------------


def test_pypi_headers(mirror: Mirror, upstream: FakePyPI) -> None:
    for accept in ("text/html", "application/vnd.pypi.simple.v1+json"):
        page = http(mirror.simple + "demo-pkg/", headers={"Accept": accept})
        assert page.status == 200
        assert page.headers["cache-control"] == PAGE_CACHE
        assert page.headers["access-control-allow-origin"] == "*"
    wheel = next(f for f in upstream.files("demo-pkg") if f.filename.endswith(".whl"))
    target = mirror.repo / "packages" / wheel.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(wheel.content)
    local = http(f"{mirror.base}/packages/{wheel.path}")
    assert local.status == 200
    assert local.headers["cache-control"] == FILE_CACHE
    other = next(f for f in upstream.files("demo-pkg") if f.path != wheel.path)
    redirected = http(f"{mirror.base}/packages/{other.path}")
    assert redirected.status == 302
    assert "cache-control" not in redirected.headers


def test_cors_preflight(mirror: Mirror) -> None:
    for url in (mirror.simple + "demo-pkg/", f"{mirror.base}/pypi/demo-pkg/json"):
        reply = http(url, method="OPTIONS")
        assert reply.status == 204, url
        assert reply.headers["access-control-allow-origin"] == "*"
        assert reply.headers["access-control-allow-methods"] == "GET, HEAD"


# -- canonical URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/simple//demo-pkg/", "/pypi/simple/demo-pkg/"),
        ("/simple/demo-pkg//", "/pypi/simple/demo-pkg/"),
        ("/simple/demo-pkg%2F", "/pypi/simple/demo-pkg/"),
        ("/simple/%64emo-pkg/", "/pypi/simple/demo-pkg/"),
        ("/simple/Demo_Pkg/", "/pypi/simple/demo-pkg/"),
        ("/simple/demo-pkg", "/pypi/simple/demo-pkg/"),
        ("/simple/demo-pkg//?format=text/html", "/pypi/simple/demo-pkg/?format=text/html"),
        ("/simple//", "/pypi/simple/"),
        ("/simple", "/pypi/simple/"),
        ("/simple/%2F", "/pypi/simple/"),
    ],
)
def test_canonical_redirects(mirror: Mirror, path: str, location: str) -> None:
    reply = http(f"http://127.0.0.1:{mirror.port}/pypi{path}")
    assert reply.status == 301
    assert reply.headers["location"] == location
    assert http(f"http://127.0.0.1:{mirror.port}{location}").status in (200, 404)


@pytest.mark.parametrize("path", ["/simple/demo-pkg/x/", "/simple/-bad-/", "/simple/a%2Fb/"])
def test_non_pages_are_404(mirror: Mirror, path: str) -> None:
    assert http(f"http://127.0.0.1:{mirror.port}/pypi{path}").status == 404


# -- XML-RPC ------------------------------------------------------------------------------------


def db_serials(mirror: Mirror) -> dict[str, int]:
    with sqlite3.connect(mirror.repo / "pypi-mirror.db") as conn:
        return dict(conn.execute("SELECT name, serial FROM serials").fetchall())


def test_xmlrpc(mirror: Mirror) -> None:
    for name in ("demo-pkg", "pypi"):
        assert http(f"{mirror.simple}{name}/").status == 200
    held = db_serials(mirror)
    assert set(held) == {"demo-pkg", "pypi"}
    server = xmlrpc.client.ServerProxy(f"{mirror.base}/pypi")
    assert server.list_packages_with_serial() == held
    assert server.changelog_last_serial() == max(held.values())
    with pytest.raises(xmlrpc.client.Fault):
        server.package_releases("demo-pkg")
    assert http(f"{mirror.base}/pypi").status == 405


def post(mirror: Mirror, body: bytes) -> Reply:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    try:
        conn.request("POST", "/pypi/pypi", body=body, headers={"Content-Type": "text/xml"})
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<methodCall><methodName>&lol2;</methodName></methodCall>"""


@pytest.mark.parametrize(
    "body",
    [b"", b"<not xml", b"<methodCall><methodName>x</methodName>", BOMB, b"<a/>", b"\xff\xfe"],
)
def test_xmlrpc_malformed(mirror: Mirror, body: bytes) -> None:
    reply = post(mirror, body)
    assert reply.status < 500
    if reply.status == 200:
        with pytest.raises(xmlrpc.client.Fault):
            xmlrpc.client.loads(reply.body)


def test_xmlrpc_oversized(mirror: Mirror) -> None:
    call = xmlrpc.client.dumps(("x" * (2 * 1024 * 1024),), "changelog_last_serial").encode()
    try:
        reply = post(mirror, call)
    except (ConnectionError, OSError):
        return  # the server may close before reading it all
    assert reply.status == 413


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://mirror.example.org/", "https://mirror.example.org"),
        ("http://10.0.0.1:8080", "http://10.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("", None),
    ],
)
def test_public_url_accepted(tmp_path: Path, value: str, expected: str | None) -> None:
    from pypi_mirror.config import config_from_dict

    config = config_from_dict({"repo_path": str(tmp_path), "public_url": value})
    assert config.public_url == expected


@pytest.mark.parametrize(
    "value", ["mirror.example.org", "ftp://x", "https://x/pypi", "https://x?y", "https://a b"]
)
def test_public_url_refused(tmp_path: Path, value: str) -> None:
    from pypi_mirror.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="public_url"):
        config_from_dict({"repo_path": str(tmp_path), "public_url": value})


def test_page_max_age(tmp_path: Path) -> None:
    from pypi_mirror.config import ConfigError, config_from_dict

    assert config_from_dict({"repo_path": str(tmp_path)}).page_max_age == 600
    with pytest.raises(ConfigError, match="page_max_age"):
        config_from_dict({"repo_path": str(tmp_path), "page_max_age": -1})


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("mirror.example.org", True),
        ("mirror.example.org:8443", True),
        ("127.0.0.1:8080", True),
        ("[2001:db8::1]:443", True),
        ("evil.test/x", False),
        ("a@b", False),
        ("a b", False),
        ("", False),
        ("-x.org", False),
    ],
)
def test_host_validation(host: str, valid: bool) -> None:
    from pypi_mirror.server.baseurl import is_valid_host

    assert is_valid_host(host) is valid


def test_json_of_stale_on_demand_project_refreshed(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(tmp_path, upstream.url, upstream.files_url, upstream={"page_ttl": "1s"}) as m:
        url = f"{m.base}/pypi/demo-pkg/json"
        assert set(http(url).json()["releases"]) == {"1.0", "1.1"}
        upstream.add_wheel("demo-pkg", "1.2")
        time.sleep(1.2)
        assert http(url).status == 200  # the held document, while a refresh runs
        assert m.wait_for(lambda: "1.2" in http(url).json()["releases"])
        doc = http(url).json()
        assert doc["info"]["version"] == "1.2"
        assert all(u.startswith(f"http://127.0.0.1:{m.port}/packages/") for u in file_urls(doc))
