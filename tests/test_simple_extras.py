"""API 1.4 pass-through (PEP 792 project status, PEP 740 provenance) and quarantine, through
`sync` and `serve` against the fake upstream's PEP 691 pages."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from pypi_mirror.index.render import SimpleExtras, render_project
from pypi_mirror.index.simple_json import parse_simple_extras
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http
from tests.test_index_sync import make_config, sync

V1_JSON = "application/vnd.pypi.simple.v1+json"
PROVENANCE = "/integrity/demo/1.0/demo-1.0-py3-none-any.whl/provenance"


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("demo", "1.0")
    fake_pypi.add_sdist("demo", "1.0")
    fake_pypi.add_wheel("plain", "2.0")
    return fake_pypi


def pages(repo: Path, name: str) -> tuple[dict, str]:
    folder = repo / "simple" / name
    doc = orjson.loads((folder / "index.v1.json").read_bytes())
    return doc, (folder / "index.html").read_text()


def simple_page_requests(fake: FakePyPI, name: str) -> int:
    return len([r for r in fake.requests if r.path == f"/simple/{name}/"])


# -- the renderer and the parser -------------------------------------------------------------


def test_parse_makes_provenance_absolute_and_checks_status() -> None:
    body = orjson.dumps(
        {
            "meta": {"api-version": "1.4"},
            "project-status": {"status": "archived", "reason": "done"},
            "files": [
                {"filename": "a.whl", "provenance": "/integrity/a/provenance"},
                {"filename": "b.whl", "provenance": None},
                {"filename": "c.whl", "provenance": "javascript:alert(1)"},
            ],
        }
    )
    extras = parse_simple_extras(body, "https://up.example/simple/a/")
    assert extras.status == "archived" and extras.status_reason == "done"
    assert extras.provenance == {
        "a.whl": "https://up.example/integrity/a/provenance",
        "b.whl": None,
        "c.whl": None,
    }
    odd = parse_simple_extras(b'{"project-status":{"status":"odd"},"files":[]}', "http://x/")
    assert odd == SimpleExtras()
    assert odd.api_version == "1.1"


def test_render_with_and_without_extras(upstream: FakePyPI) -> None:
    wheel = upstream.file("demo", "demo-1.0-py3-none-any.whl")
    doc = {
        "info": {"name": "demo"},
        "last_serial": 5,
        "releases": {
            "1.0": [
                {
                    "filename": wheel.filename,
                    "url": f"https://files.example/packages/{wheel.path}",
                    "size": wheel.size,
                    "digests": {"sha256": wheel.sha256},
                }
            ]
        },
    }
    plain = render_project(doc)
    assert b"provenance" not in plain.json and b"project-status" not in plain.html
    assert orjson.loads(plain.json)["meta"]["api-version"] == "1.1"
    url = "https://up.example/p?a=1&b=2"
    extras = SimpleExtras("deprecated", 'use "other"', {wheel.filename: url})
    rendered = render_project(doc, extras)
    page = orjson.loads(rendered.json)
    assert page["meta"]["api-version"] == "1.4"
    assert page["project-status"] == {"status": "deprecated", "reason": 'use "other"'}
    assert page["files"][0]["provenance"] == url
    html = rendered.html.decode()
    assert '<meta name="pypi:repository-version" content="1.4">' in html
    assert '<meta name="pypi:project-status" content="deprecated">' in html
    assert '<meta name="pypi:project-status-reason" content="use &quot;other&quot;">' in html
    assert 'data-provenance="https://up.example/p?a=1&amp;b=2"' in html
    only_provenance = orjson.loads(render_project(doc, SimpleExtras(provenance={})).json)
    assert only_provenance["meta"]["api-version"] == "1.3"
    assert only_provenance["files"][0]["provenance"] is None
    quarantined = render_project(doc, SimpleExtras("quarantined"))
    assert orjson.loads(quarantined.json)["files"] == [] and quarantined.files == ()
    assert "<a href" not in quarantined.html.decode()


# -- sync ------------------------------------------------------------------------------------


def test_sync_carries_status_and_provenance(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.set_status("demo", "deprecated", "use plain")
    upstream.set_provenance("demo", "demo-1.0-py3-none-any.whl", PROVENANCE)
    repo = tmp_path / "repo"
    assert sync(make_config(repo, upstream))[0] == 0
    doc, html = pages(repo, "demo")
    assert doc["meta"]["api-version"] == "1.4"
    assert doc["project-status"] == {"status": "deprecated", "reason": "use plain"}
    by_name = {f["filename"]: f for f in doc["files"]}
    assert by_name["demo-1.0-py3-none-any.whl"]["provenance"] == upstream.url + PROVENANCE
    assert by_name["demo-1.0.tar.gz"]["provenance"] is None
    assert '<meta name="pypi:project-status" content="deprecated">' in html
    assert f'data-provenance="{upstream.url}{PROVENANCE}"' in html
    # An upstream page without the fields: the mirror's page claims no more than 1.1.
    plain, plain_html = pages(repo, "plain")
    assert plain["meta"]["api-version"] == "1.1" and "project-status" not in plain
    assert "provenance" not in plain["files"][0]
    assert 'content="1.1"' in plain_html


def test_setting_turns_the_extra_request_off(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.set_status("demo", "archived")
    repo = tmp_path / "repo"
    config = make_config(repo, upstream, upstream={"fetch_simple_json": False})
    assert sync(config)[0] == 0
    assert simple_page_requests(upstream, "demo") == 0
    doc, _ = pages(repo, "demo")
    assert "project-status" not in doc and doc["meta"]["api-version"] == "1.1"


def test_upstream_without_json_pages(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.simple_json_pages = False  # HTML only, whatever is asked for
    for index in range(5):
        upstream.add_wheel(f"extra-{index}", "1.0")
    repo = tmp_path / "repo"
    code, _ = sync(make_config(repo, upstream, sync={"concurrent_downloads": 1}))
    assert code == 0
    asked = [
        r.path for r in upstream.requests if r.path.startswith("/simple/") and r.path != "/simple/"
    ]
    assert len(asked) == 1  # then remembered: not asked again this run
    doc, _ = pages(repo, "demo")
    assert doc["meta"]["api-version"] == "1.1" and len(doc["files"]) == 2


def test_quarantine_removes_cached_files_and_refuses_them(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    repo = tmp_path / "repo"
    config = make_config(repo, upstream)
    assert sync(config)[0] == 0
    wheel = upstream.file("demo", "demo-1.0-py3-none-any.whl")
    cached = repo / "packages" / wheel.path
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(wheel.content)

    upstream.set_status("demo", "quarantined", "malware")
    code, _ = sync(config)
    assert code == 0
    assert not cached.exists()
    doc, html = pages(repo, "demo")
    assert doc["files"] == [] and doc["project-status"]["status"] == "quarantined"
    assert "<a href" not in html
    record = orjson.loads((repo / "quarantined.json").read_bytes())
    assert wheel.path in record["demo"]

    # Even when a copy turns up in the cache, `serve` refuses it.
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(wheel.content)
    with Mirror(tmp_path, upstream.url, upstream.files_url, repo_path=str(repo)) as mirror:
        assert http(mirror.base + "/packages/" + wheel.path).status == 404
        assert http(mirror.base + "/packages/" + wheel.path + ".metadata").status == 404
        other = upstream.file("plain", "plain-2.0-py3-none-any.whl")
        assert http(mirror.base + "/packages/" + other.path).status == 302
        page = http(mirror.simple + "demo/", headers={"Accept": V1_JSON}).json()
        assert page["files"] == [] and page["project-status"]["status"] == "quarantined"
        # Lifted upstream: the next sync records it, and the running server serves again.
        upstream.set_status("demo", "active")
        assert sync(config)[0] == 0
        assert mirror.wait_for(
            lambda: http(mirror.base + "/packages/" + wheel.path).status == 200, timeout=5
        )


# -- serve (on demand) -----------------------------------------------------------------------


def test_on_demand_pages_carry_the_fields(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.set_status("demo", "archived")
    upstream.set_provenance("demo", "demo-1.0-py3-none-any.whl", PROVENANCE)
    with Mirror(tmp_path, upstream.url, upstream.files_url) as mirror:
        doc = http(mirror.simple + "demo/", headers={"Accept": V1_JSON}).json()
        assert doc["meta"]["api-version"] == "1.4"
        assert doc["project-status"] == {"status": "archived"}
        wheel = next(f for f in doc["files"] if f["filename"].endswith(".whl"))
        assert wheel["provenance"] == upstream.url + PROVENANCE
        html = http(mirror.simple + "demo/").body.decode()
        assert '<meta name="pypi:project-status" content="archived">' in html
        assert "data-provenance=" in html


def test_cache_never_downloads_a_quarantined_file(tmp_path: Path, upstream: FakePyPI) -> None:
    from pypi_mirror.db import Database

    upstream.set_status("demo", "quarantined")
    repo = tmp_path / "repo"
    config = make_config(repo, upstream)
    assert sync(config)[0] == 0  # the index: demo recorded as quarantined
    wheel = upstream.file("demo", "demo-1.0-py3-none-any.whl")
    other = upstream.file("plain", "plain-2.0-py3-none-any.whl")
    db = Database.in_repo(repo)
    now = time.time()
    votes = [(f.path, f"10.0.{i}.0/24", now) for f in (wheel, other) for i in range(3)]
    db.add_votes(votes, dedup_window=300)
    db.close()
    assert sync(config)[0] == 0
    assert (repo / "packages" / other.path).is_file()  # the control: votes bring it in
    assert not (repo / "packages" / wheel.path).exists()


def test_on_demand_quarantine_refuses_cached_files(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.set_status("demo", "quarantined", "malware")
    wheel = upstream.file("demo", "demo-1.0-py3-none-any.whl")
    with Mirror(tmp_path, upstream.url, upstream.files_url) as mirror:
        cached = mirror.repo / "packages" / wheel.path
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(wheel.content)
        assert http(mirror.base + "/packages/" + wheel.path).status == 200  # not known yet
        page = http(mirror.simple + "demo/", headers={"Accept": V1_JSON}).json()
        assert page["files"] == []
        assert page["project-status"] == {"status": "quarantined", "reason": "malware"}
        html = http(mirror.simple + "demo/").body.decode()
        assert '<meta name="pypi:project-status-reason" content="malware">' in html
        assert mirror.wait_for(
            lambda: http(mirror.base + "/packages/" + wheel.path).status == 404, timeout=5
        )


def test_on_demand_from_an_upstream_without_json_pages(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.simple_json_pages = False
    with Mirror(tmp_path, upstream.url, upstream.files_url) as mirror:
        for name in ("demo", "plain"):
            doc = http(mirror.simple + f"{name}/", headers={"Accept": V1_JSON}).json()
            assert doc["meta"]["api-version"] == "1.1" and doc["files"]
        # Asked once, then remembered: the second project costs no extra request.
        assert simple_page_requests(upstream, "demo") == 1
        assert simple_page_requests(upstream, "plain") == 0


def test_quarantine_holds_while_the_status_cannot_be_read(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    upstream.set_status("demo", "quarantined")
    repo = tmp_path / "repo"
    assert sync(make_config(repo, upstream))[0] == 0
    upstream.add_wheel("demo", "1.1")  # a new serial, while the page cannot be read
    config = make_config(repo, upstream, upstream={"fetch_simple_json": False})
    assert sync(config)[0] == 0
    doc, _ = pages(repo, "demo")
    assert doc["files"] == [] and doc["project-status"]["status"] == "quarantined"
    assert "demo" in orjson.loads((repo / "quarantined.json").read_bytes())
