"""Tests of the fake upstream PyPI itself: every end-to-end test relies on it being right."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import tarfile
import xmlrpc.client
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest

from tests.fakepypi import FakePyPI, file_path
from tests.wheelbuilder import build_sdist, build_wheel

# Key sets of real PyPI answers (recorded /pypi/six/json and /simple/six/ v1 JSON).
REAL_JSON_KEYS = {"info", "last_serial", "ownership", "releases", "urls", "vulnerabilities"}
REAL_INFO_KEYS = {
    "author", "author_email", "bugtrack_url", "classifiers", "description",
    "description_content_type", "docs_url", "download_url", "downloads", "dynamic",
    "home_page", "keywords", "license", "license_expression", "license_files", "maintainer",
    "maintainer_email", "name", "package_url", "platform", "project_url", "project_urls",
    "provides_extra", "release_url", "requires_dist", "requires_python", "summary", "version",
    "yanked", "yanked_reason",
}  # fmt: skip
REAL_FILE_KEYS = {
    "comment_text", "core-metadata", "digests", "downloads", "filename", "has_sig",
    "md5_digest", "packagetype", "python_version", "requires_python", "size", "upload_time",
    "upload_time_iso_8601", "url", "yanked", "yanked_reason",
}  # fmt: skip
REAL_SIMPLE_FILE_KEYS = {
    "filename", "hashes", "requires-python", "size", "upload-time", "url", "yanked",
}  # fmt: skip


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
    """One request, no redirect following, no error raising."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


# --------------------------------------------------------------------------- builders


def test_wheel_is_deterministic_and_its_record_is_right() -> None:
    first = build_wheel("My.Pkg", "1.2", dependencies=["dep>=1"], requires_python=">=3.8")
    assert build_wheel("My.Pkg", "1.2", dependencies=["dep>=1"], requires_python=">=3.8") == first
    filename, wheel, metadata = first
    assert filename == "My_Pkg-1.2-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        names = archive.namelist()
        assert names[-1] == "My_Pkg-1.2.dist-info/RECORD"
        assert archive.read("my_pkg/__init__.py") == b'__version__ = "1.2"\n'
        assert archive.read("My_Pkg-1.2.dist-info/METADATA") == metadata
        assert b"Tag: py3-none-any" in archive.read("My_Pkg-1.2.dist-info/WHEEL")
        record = archive.read("My_Pkg-1.2.dist-info/RECORD").decode().splitlines()
        assert len(record) == len(names)
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            if path.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = archive.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode()
            assert int(size) == len(data)
    text = metadata.decode()
    assert "Metadata-Version: 2.1\nName: My.Pkg\nVersion: 1.2\n" in text
    assert "Requires-Dist: dep>=1\n" in text
    assert "Requires-Python: >=3.8\n" in text


def test_extra_bytes_are_stored_incompressible() -> None:
    _, small, _ = build_wheel("pad", "1.0")
    _, big, _ = build_wheel("pad", "1.0", extra_bytes=200_000)
    assert len(big) - len(small) >= 200_000
    assert build_wheel("pad", "1.0", extra_bytes=200_000)[1] == big


def test_sdist_is_deterministic_and_carries_pkg_info() -> None:
    filename, content = build_sdist("demo-pkg", "0.3", dependencies=["six"])
    assert filename == "demo_pkg-0.3.tar.gz"
    assert build_sdist("demo-pkg", "0.3", dependencies=["six"]) == (filename, content)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(content))) as archive:
        names = archive.getnames()
        assert "demo_pkg-0.3/PKG-INFO" in names
        assert "demo_pkg-0.3/pyproject.toml" in names
        pkg_info = archive.extractfile("demo_pkg-0.3/PKG-INFO")
        assert pkg_info is not None
        assert b"Requires-Dist: six" in pkg_info.read()


# --------------------------------------------------------------------------- JSON API


def test_json_api_has_pypi_shape(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("Demo_Pkg", "1.0", dependencies=["six"], requires_python=">=3.8")
    sdist = fake_pypi.add_sdist("Demo_Pkg", "1.0")
    no_meta = fake_pypi.add_wheel("Demo_Pkg", "1.1", metadata=False)

    answer = fetch(f"{fake_pypi.url}/pypi/demo-pkg/json")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    doc = answer.json()
    assert set(doc) == REAL_JSON_KEYS
    assert set(doc["info"]) == REAL_INFO_KEYS
    assert doc["info"]["name"] == "Demo_Pkg"
    assert doc["info"]["version"] == "1.1"
    assert doc["last_serial"] == fake_pypi.project_serial("demo-pkg") == fake_pypi.serial
    assert answer.headers["X-PyPI-Last-Serial"] == str(doc["last_serial"])
    assert list(doc["releases"]) == ["1.0", "1.1"]
    assert [f["filename"] for f in doc["urls"]] == [no_meta.filename]
    assert doc["vulnerabilities"] == []

    entries = {f["filename"]: f for files in doc["releases"].values() for f in files}
    for entry in entries.values():
        assert set(entry) == REAL_FILE_KEYS
    whl = entries[wheel.filename]
    assert whl["url"] == wheel.url == f"{fake_pypi.files_url}/packages/{wheel.path}"
    assert whl["digests"] == {
        "sha256": hashlib.sha256(wheel.content).hexdigest(),
        "md5": hashlib.md5(wheel.content).hexdigest(),
        "blake2b_256": hashlib.blake2b(wheel.content, digest_size=32).hexdigest(),
    }
    assert wheel.path == file_path(wheel.content, wheel.filename)
    assert wheel.path.split("/")[:3] == [
        whl["digests"]["blake2b_256"][:2],
        whl["digests"]["blake2b_256"][2:4],
        whl["digests"]["blake2b_256"][4:],
    ]
    assert whl["size"] == len(wheel.content)
    assert whl["packagetype"] == "bdist_wheel" and whl["python_version"] == "py3"
    assert whl["requires_python"] == ">=3.8"
    assert whl["yanked"] is False and whl["yanked_reason"] is None
    assert whl["upload_time_iso_8601"].endswith("Z") and len(whl["upload_time_iso_8601"]) == 27
    assert whl["upload_time"] == whl["upload_time_iso_8601"][:19]
    assert wheel.metadata is not None
    assert whl["core-metadata"] == {"sha256": hashlib.sha256(wheel.metadata).hexdigest()}
    assert entries[sdist.filename]["packagetype"] == "sdist"
    assert entries[sdist.filename]["python_version"] == "source"
    assert entries[sdist.filename]["core-metadata"] is False
    assert entries[no_meta.filename]["core-metadata"] is False

    assert fetch(wheel.metadata_url).body == wheel.metadata
    assert fetch(no_meta.metadata_url).status == 404
    assert fetch(sdist.metadata_url).status == 404


def test_release_json_and_latest_version(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo", "1.0", dependencies=["six"])
    fake_pypi.add_wheel("demo", "2.0", yanked="broken")
    fake_pypi.add_wheel("demo", "3.0rc1")
    doc = fetch(f"{fake_pypi.url}/pypi/demo/json").json()
    assert doc["info"]["version"] == "1.0"  # 2.0 is yanked, 3.0rc1 a pre-release
    yanked = doc["releases"]["2.0"][0]
    assert yanked["yanked"] is True and yanked["yanked_reason"] == "broken"

    answer = fetch(f"{fake_pypi.url}/pypi/demo/2.0/json")
    assert answer.status == 200
    release = answer.json()
    assert "releases" not in release
    assert release["info"]["version"] == "2.0"
    assert release["info"]["yanked"] is True and release["info"]["yanked_reason"] == "broken"
    assert [f["filename"] for f in release["urls"]] == ["demo-2.0-py3-none-any.whl"]
    assert release["last_serial"] == fake_pypi.project_serial("demo")
    assert fetch(f"{fake_pypi.url}/pypi/demo/1.0/json").json()["info"]["requires_dist"] == ["six"]
    assert fetch(f"{fake_pypi.url}/pypi/demo/9.9/json").status == 404


def test_non_normalised_json_names_redirect_and_unknown_is_404(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("Flask_Login", "0.6.3")
    answer = fetch(f"{fake_pypi.url}/pypi/Flask_Login/json")
    assert answer.status == 301
    assert answer.headers["Location"] == "/pypi/flask-login/json"
    answer = fetch(f"{fake_pypi.url}/pypi/Flask.Login/0.6.3/json")
    assert answer.status == 301
    assert answer.headers["Location"] == "/pypi/flask-login/0.6.3/json"
    assert fetch(f"{fake_pypi.url}/pypi/flask-login/json").json()["info"]["name"] == "Flask_Login"
    assert fetch(f"{fake_pypi.url}/pypi/nothing-here/json").status == 404


# --------------------------------------------------------------------------- serials, XML-RPC


def test_every_change_bumps_the_serial(fake_pypi: FakePyPI) -> None:
    assert fake_pypi.serial == 0
    fake_pypi.add_wheel("alpha", "1.0")
    fake_pypi.add_wheel("beta", "1.0")
    assert (fake_pypi.project_serial("alpha"), fake_pypi.project_serial("beta")) == (1, 2)
    fake_pypi.yank("alpha", "alpha-1.0-py3-none-any.whl", "oops")
    assert fake_pypi.serial == fake_pypi.project_serial("alpha") == 3
    fake_pypi.unyank("alpha", "alpha-1.0-py3-none-any.whl")
    fake_pypi.add_sdist("alpha", "1.0")
    fake_pypi.remove_file("alpha", "alpha-1.0.tar.gz")
    assert fake_pypi.serial == fake_pypi.project_serial("alpha") == 6
    assert fake_pypi.project_serial("beta") == 2
    fake_pypi.remove_project("beta")
    assert fake_pypi.serial == 7
    with pytest.raises(KeyError):
        fake_pypi.project_serial("beta")
    with pytest.raises(ValueError):
        fake_pypi.add_wheel("alpha", "1.0")  # PyPI never lets a filename be reused


def test_xmlrpc_lists_display_names_with_serials(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("Flask_Login", "1.0")
    fake_pypi.add_wheel("zope.interface", "5.0")
    fake_pypi.add_wheel("Flask-Login", "1.1")  # same project; keeps its first display name
    with xmlrpc.client.ServerProxy(f"{fake_pypi.url}/pypi") as client:
        assert client.list_packages_with_serial() == {"Flask_Login": 3, "zope.interface": 2}
        assert client.changelog_last_serial() == 3 == fake_pypi.serial
        with pytest.raises(xmlrpc.client.Fault):
            client.no_such_method()
        with pytest.raises(xmlrpc.client.Fault):
            client.changelog_last_serial(1, 2)
    assert len(fake_pypi.requests_matching("/pypi", method="POST")) == 4


def test_xmlrpc_rejects_entity_expansion(fake_pypi: FakePyPI) -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaa">]>'
        b"<methodCall><methodName>&a;</methodName><params/></methodCall>"
    )
    conn = http.client.HTTPConnection("127.0.0.1", fake_pypi.port, timeout=30)
    conn.request("POST", "/pypi", body=body, headers={"Content-Type": "text/xml"})
    answer = conn.getresponse().read()
    conn.close()
    with pytest.raises(xmlrpc.client.Fault):
        xmlrpc.client.loads(answer)


# --------------------------------------------------------------------------- simple index


def test_simple_project_page_html_and_json(fake_pypi: FakePyPI) -> None:
    ok = fake_pypi.add_wheel("Demo.Pkg", "1.0", requires_python=">=3.8, <4")
    bad = fake_pypi.add_sdist("Demo.Pkg", "0.9", yanked="bad release")
    plain_yank = fake_pypi.add_wheel("Demo.Pkg", "0.8", yanked=True)

    page = fetch(f"{fake_pypi.url}/simple/demo-pkg/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html"
    assert page.headers["X-PyPI-Last-Serial"] == str(fake_pypi.project_serial("demo-pkg"))
    text = page.body.decode()
    assert text.startswith("<!DOCTYPE html>\n<html>\n<head><title>Links for Demo.Pkg</title>")
    assert (
        f'<a href="{ok.url}#sha256={ok.sha256}" data-requires-python="&gt;=3.8, &lt;4">'
        f"{ok.filename}</a><br/>"
    ) in text
    assert f'#sha256={bad.sha256}" data-yanked="bad release">{bad.filename}</a>' in text
    assert f'#sha256={plain_yank.sha256}" data-yanked="">' in text
    anchors = [line for line in text.splitlines() if line.startswith("<a ")]
    assert len(anchors) == 3 and anchors == sorted(anchors, key=lambda a: a.split(">")[1])
    # As recorded from PyPI: the non-normalised name gets the same page; no slash gets 308.
    assert fetch(f"{fake_pypi.url}/simple/Demo_Pkg/").body == page.body
    no_slash = fetch(f"{fake_pypi.url}/simple/demo-pkg")
    assert no_slash.status == 308 and no_slash.headers["Location"] == "/simple/demo-pkg/"

    answer = fetch(
        f"{fake_pypi.url}/simple/demo-pkg/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    assert answer.headers["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    doc = answer.json()
    assert doc["name"] == "demo-pkg"
    assert doc["meta"] == {
        "api-version": "1.1",
        "_last-serial": str(fake_pypi.project_serial("demo-pkg")),
    }
    assert doc["versions"] == ["0.8", "0.9", "1.0"]
    files = {f["filename"]: f for f in doc["files"]}
    assert all(set(f) == REAL_SIMPLE_FILE_KEYS for f in files.values())
    assert files[ok.filename]["hashes"] == {"sha256": ok.sha256}
    assert files[ok.filename]["size"] == ok.size
    assert files[ok.filename]["yanked"] is False
    assert files[bad.filename]["yanked"] == "bad release"
    assert files[plain_yank.filename]["yanked"] is True
    via_query = fetch(
        f"{fake_pypi.url}/simple/demo-pkg/?format=application/vnd.pypi.simple.v1%2Bjson"
    )
    assert via_query.json() == doc
    assert fetch(f"{fake_pypi.url}/simple/unknown/").status == 404


def test_simple_root_lists_projects_with_serials(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("Zeta_Pkg", "1.0")
    fake_pypi.add_wheel("alpha", "1.0")
    fake_pypi.add_wheel("alpha", "2.0")
    page = fetch(f"{fake_pypi.url}/simple/")
    assert page.headers["X-PyPI-Last-Serial"] == "3"
    assert '<a href="zeta-pkg/">Zeta_Pkg</a>' in page.body.decode()
    assert '<a href="alpha/">alpha</a>' in page.body.decode()
    pip_accept = (
        "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
        "text/html; q=0.01"
    )
    doc = fetch(f"{fake_pypi.url}/simple/", headers={"Accept": pip_accept}).json()
    assert doc["meta"] == {"_last-serial": 3, "api-version": "1.1"}
    assert doc["projects"] == [
        {"_last-serial": 1, "name": "Zeta_Pkg"},
        {"_last-serial": 3, "name": "alpha"},
    ]
    html_first = "text/html, application/vnd.pypi.simple.v1+json; q=0.5"
    assert fetch(f"{fake_pypi.url}/simple/", headers={"Accept": html_first}).body == page.body


# --------------------------------------------------------------------------- file host


def test_files_support_head_and_ranges(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("ranged", "1.0", extra_bytes=5000)
    head = fetch(wheel.url, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(wheel.size)
    assert head.headers["Accept-Ranges"] == "bytes"

    full = fetch(wheel.url)
    assert full.body == wheel.content
    part = fetch(wheel.url, headers={"Range": "bytes=10-19"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 10-19/{wheel.size}"
    assert part.body == wheel.content[10:20]
    tail = fetch(wheel.url, headers={"Range": "bytes=-100"})
    assert tail.status == 206 and tail.body == wheel.content[-100:]
    rest = fetch(wheel.url, headers={"Range": f"bytes={wheel.size - 5}-"})
    assert rest.body == wheel.content[-5:]
    beyond = fetch(wheel.url, headers={"Range": f"bytes={wheel.size}-"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{wheel.size}"

    missing = wheel.url.replace(wheel.filename, "other-1.0-py3-none-any.whl")
    assert fetch(missing).status == 404
    assert fetch(f"{fake_pypi.files_url}/packages/../../etc/passwd").status == 404


def test_removed_files_and_projects_disappear(fake_pypi: FakePyPI) -> None:
    keep = fake_pypi.add_wheel("gone", "1.0")
    drop = fake_pypi.add_wheel("gone", "2.0")
    fake_pypi.remove_file("gone", drop.filename)
    assert fetch(drop.url).status == 404
    doc = fetch(f"{fake_pypi.url}/pypi/gone/json").json()
    assert list(doc["releases"]) == ["1.0"]
    fake_pypi.remove_project("gone")
    assert fetch(keep.url).status == 404
    assert fetch(f"{fake_pypi.url}/pypi/gone/json").status == 404
    assert fetch(f"{fake_pypi.url}/simple/gone/").status == 404
    with xmlrpc.client.ServerProxy(f"{fake_pypi.url}/pypi") as client:
        assert client.list_packages_with_serial() == {}


# --------------------------------------------------------------------------- faults


def test_fail_counts_down_and_forever_lasts_until_cleared(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("flaky", "1.0")
    fake_pypi.fail("/pypi/flaky/json", status=503, times=2)
    statuses = [fetch(f"{fake_pypi.url}/pypi/flaky/json").status for _ in range(3)]
    assert statuses == [503, 503, 200]
    fake_pypi.fail(wheel.filename, status=500, times=None)
    assert [fetch(wheel.url).status for _ in range(3)] == [500, 500, 500]
    assert fetch(f"{fake_pypi.url}/simple/flaky/").status == 200  # other paths unaffected
    fake_pypi.clear_faults()
    assert fetch(wheel.url).status == 200
    assert len(fake_pypi.requests_matching(wheel.filename, method="GET")) == 4


def test_delay_holds_matching_requests_back(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("slow", "1.0")
    fake_pypi.delay("/simple/slow/", 30)
    conn = http.client.HTTPConnection("127.0.0.1", fake_pypi.port, timeout=0.5)
    conn.request("GET", "/simple/slow/")
    with pytest.raises(TimeoutError):
        conn.getresponse()
    conn.close()
    assert fetch(f"{fake_pypi.url}/pypi/slow/json").status == 200
    fake_pypi.clear_faults()
    assert fetch(f"{fake_pypi.url}/simple/slow/").status == 200


def test_corrupt_keeps_length_but_changes_bytes(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("bent", "1.0")
    fake_pypi.corrupt(wheel.filename)
    answer = fetch(wheel.url)
    assert answer.status == 200
    assert len(answer.body) == wheel.size
    assert hashlib.sha256(answer.body).hexdigest() != wheel.sha256
    part = fetch(wheel.url, headers={"Range": "bytes=0-9"})
    assert len(part.body) == 10 and part.body != wheel.content[:10]


def test_truncate_drops_the_connection_mid_body(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("cut", "1.0", extra_bytes=100_000)
    fake_pypi.truncate(wheel.filename)
    parts = urlsplit(wheel.url)
    conn = http.client.HTTPConnection("127.0.0.1", fake_pypi.port, timeout=30)
    conn.request("GET", parts.path)
    response = conn.getresponse()
    assert response.status == 200
    assert response.headers["Content-Length"] == str(wheel.size)
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert len(caught.value.partial) < wheel.size
    conn.close()
    fake_pypi.clear_faults()
    assert fetch(wheel.url).body == wheel.content


def test_stale_serves_the_previous_snapshot(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("moving", "1.0")
    old_serial = fake_pypi.project_serial("moving")
    fake_pypi.add_wheel("moving", "2.0")
    new_serial = fake_pypi.project_serial("moving")
    fake_pypi.stale("moving", times=2)
    for _ in range(2):
        answer = fetch(f"{fake_pypi.url}/pypi/moving/json")
        assert answer.headers["X-PyPI-Last-Serial"] == str(old_serial)
        doc = answer.json()
        assert doc["last_serial"] == old_serial
        assert list(doc["releases"]) == ["1.0"]
    fresh = fetch(f"{fake_pypi.url}/pypi/moving/json").json()
    assert fresh["last_serial"] == new_serial
    assert list(fresh["releases"]) == ["1.0", "2.0"]

    fake_pypi.add_wheel("brand-new", "1.0")
    fake_pypi.stale("brand-new")
    assert fetch(f"{fake_pypi.url}/pypi/brand-new/json").status == 404  # cached "not yet"
    assert fetch(f"{fake_pypi.url}/pypi/brand-new/json").status == 200


def test_quarantined_project_is_listed_but_not_served(fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("fine", "1.0")
    fake_pypi.add_wheel("Bad_Pkg", "1.0")
    fake_pypi.quarantine("bad-pkg")
    serial = fake_pypi.project_serial("bad-pkg")
    assert serial == fake_pypi.serial == 3
    with xmlrpc.client.ServerProxy(f"{fake_pypi.url}/pypi") as client:
        assert client.list_packages_with_serial() == {"fine": 1, "Bad_Pkg": 3}
    root = fetch(
        f"{fake_pypi.url}/simple/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    assert {"_last-serial": 3, "name": "Bad_Pkg"} in root.json()["projects"]
    assert fetch(f"{fake_pypi.url}/pypi/bad-pkg/json").status == 404
    assert fetch(f"{fake_pypi.url}/pypi/bad-pkg/1.0/json").status == 404
    assert fetch(f"{fake_pypi.url}/simple/bad-pkg/").status == 404
    fake_pypi.quarantine("bad-pkg", False)
    assert fetch(f"{fake_pypi.url}/pypi/bad-pkg/json").status == 200


def test_relative_urls_resolve_against_pypi_url(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("rel", "1.0")
    fake_pypi.set_relative_urls("rel")
    base = f"{fake_pypi.url}/pypi/rel/json"
    entry = fetch(base).json()["urls"][0]
    assert entry["url"] == f"../../packages/packages/{wheel.path}"
    absolute = urljoin(base, entry["url"])
    assert absolute == f"{fake_pypi.url}/packages/packages/{wheel.path}"
    assert fetch(absolute).body == wheel.content
    assert fetch(absolute + ".metadata").body == wheel.metadata
    release_base = f"{fake_pypi.url}/pypi/rel/1.0/json"
    release_entry = fetch(release_base).json()["urls"][0]
    assert urljoin(release_base, release_entry["url"]) == absolute
    # The simple pages keep absolute URLs on the file host, as on PyPI.
    assert wheel.url in fetch(f"{fake_pypi.url}/simple/rel/").body.decode()


def test_requests_are_recorded(fake_pypi: FakePyPI) -> None:
    fetch(f"{fake_pypi.url}/simple/?x=1", headers={"User-Agent": "probe/1"})
    fetch(f"{fake_pypi.url}/simple/", method="HEAD")
    records = fake_pypi.requests
    assert [(r.method, r.path, r.query) for r in records] == [
        ("GET", "/simple/", "x=1"),
        ("HEAD", "/simple/", ""),
    ]
    assert records[0].headers["User-Agent"] == "probe/1"
    assert len(fake_pypi.requests_matching("/simple/", method="head")) == 1
    fake_pypi.clear_requests()
    assert fake_pypi.requests == []


async def test_serves_the_tests_own_event_loop(fake_pypi: FakePyPI) -> None:
    wheel = fake_pypi.add_wheel("asyncy", "1.0")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fake_pypi.url}/pypi/asyncy/json") as response:
            doc = await response.json()
        async with session.get(doc["urls"][0]["url"]) as response:
            assert await response.read() == wheel.content


# --------------------------------------------------------------------------- real installers


def _clean_env() -> dict[str, str]:
    """The environment without any pip/uv settings or proxies that could reach elsewhere."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PIP_", "UV_"))
        and key.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        NO_PROXY="127.0.0.1",
        UV_NO_CONFIG="1",
    )
    return env


def _publish_installable(fake: FakePyPI) -> None:
    fake.add_wheel("demo-app", "1.0", dependencies=["demo-lib>=1.0"])
    fake.add_wheel("demo-lib", "1.0")
    fake.add_wheel("demo-lib", "1.5", requires_python=">=4")  # not for this interpreter
    fake.add_wheel("demo-lib", "2.0", yanked="broken")  # installers skip yanked files
    fake.add_sdist("demo-lib", "1.0")


def _assert_installed(target: Path) -> None:
    assert (target / "demo_app" / "__init__.py").read_text() == '__version__ = "1.0"\n'
    assert (target / "demo_lib" / "__init__.py").read_text() == '__version__ = "1.0"\n'
    assert (target / "demo_lib-1.0.dist-info" / "METADATA").is_file()


def test_pip_installs_wheels_with_dependencies(fake_pypi: FakePyPI, tmp_path: Path) -> None:
    _publish_installable(fake_pypi)
    target = tmp_path / "target"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--index-url", f"{fake_pypi.url}/simple/"),
            *("--target", str(target), "--no-compile", "demo-app"),
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_installed(target)
    assert fake_pypi.requests_matching("demo_lib-1.0-py3-none-any.whl", method="GET")


def test_uv_installs_wheels_with_dependencies(fake_pypi: FakePyPI, tmp_path: Path) -> None:
    _publish_installable(fake_pypi)
    target = tmp_path / "target"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "uv", "pip", "install", "--no-cache"),
            *("--python", sys.executable, "--index-url", f"{fake_pypi.url}/simple/"),
            *("--target", str(target), "demo-app"),
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_installed(target)
