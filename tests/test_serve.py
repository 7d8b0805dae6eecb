"""`pypi-mirror serve` end to end: a real server process, a fake upstream, real HTTP."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.fakepypi import FakeFile, FakePyPI
from tests.mirror import Mirror, http

V1_JSON = "application/vnd.pypi.simple.v1+json"
V1_HTML = "application/vnd.pypi.simple.v1+html"


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("demo-pkg", "1.0", requires_python=">=3.8")
    fake_pypi.add_sdist("demo-pkg", "1.0")
    fake_pypi.add_wheel("demo-pkg", "1.1")
    return fake_pypi


@pytest.fixture
def mirror(tmp_path: Path, upstream: FakePyPI) -> Mirror:
    with Mirror(tmp_path, upstream.url, upstream.files_url) as running:
        yield running


def place_local(mirror: Mirror, file: FakeFile, tier_root: Path | None = None) -> Path:
    target = (tier_root or mirror.repo / "packages") / file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(file.content)
    return target


# -- simple pages ----------------------------------------------------------------------------


def test_project_page_fetched_on_demand_in_both_formats(mirror: Mirror, upstream: FakePyPI) -> None:
    html = http(mirror.simple + "demo-pkg/")
    assert html.status == 200
    assert html.headers["content-type"] == "text/html"
    assert html.headers["vary"] == "Accept"
    assert html.headers["x-pypi-last-serial"] == str(upstream.project_serial("demo-pkg"))
    assert b'href="../../packages/' in html.body
    assert b'data-requires-python="&gt;=3.8"' in html.body

    page = http(mirror.simple + "demo-pkg/", headers={"Accept": V1_JSON})
    assert page.status == 200
    assert page.headers["content-type"] == V1_JSON
    doc = page.json()
    assert doc["name"] == "demo-pkg"
    assert doc["versions"] == ["1.0", "1.1"]
    assert {f["filename"] for f in doc["files"]} == {f.filename for f in upstream.files("demo-pkg")}
    for entry in doc["files"]:
        assert entry["url"].startswith("../../packages/")
        assert "dist-info-metadata" not in entry
    # stored on disk with its serial, fetched once
    assert (mirror.repo / "json" / "demo-pkg").is_file()
    assert (mirror.repo / "simple" / "demo-pkg" / "index.v1.json").is_file()
    assert len(upstream.requests_matching("/pypi/demo-pkg/json")) == 1


@pytest.mark.parametrize(
    ("accept", "query", "expected"),
    [
        (None, "", "text/html"),
        ("*/*", "", "text/html"),
        ("text/html", "", "text/html"),
        (V1_HTML, "", V1_HTML),
        ("application/vnd.pypi.simple.latest+html", "", V1_HTML),
        ("application/vnd.pypi.simple.latest+json", "", V1_JSON),
        (f"{V1_JSON}, {V1_HTML};q=0.1, text/html;q=0.01", "", V1_JSON),
        (f"{V1_JSON};q=0.2, text/html;q=0.9", "", "text/html"),
        ("text/html", f"format={V1_JSON}", V1_JSON),
    ],
)
def test_content_negotiation(mirror: Mirror, accept: str | None, query: str, expected: str) -> None:
    headers = {"Accept": accept} if accept else {}
    reply = http(mirror.simple + "demo-pkg/" + (f"?{query}" if query else ""), headers=headers)
    assert reply.status == 200
    assert reply.headers["content-type"] == expected
    assert reply.headers["vary"] == "Accept"


def test_nothing_acceptable_is_406(mirror: Mirror) -> None:
    reply = http(mirror.simple + "demo-pkg/", headers={"Accept": "application/xml"})
    assert reply.status == 406
    reply = http(mirror.simple + "demo-pkg/", headers={"Accept": f"{V1_JSON};q=0, text/plain"})
    assert reply.status == 406


def test_non_normalised_names_and_missing_slash_redirect(mirror: Mirror) -> None:
    for path, target in [
        ("Demo_Pkg/", "/pypi/simple/demo-pkg/"),
        ("demo.pkg/", "/pypi/simple/demo-pkg/"),
        ("demo-pkg", "/pypi/simple/demo-pkg/"),
        ("DEMO--pkg", "/pypi/simple/demo-pkg/"),
    ]:
        reply = http(mirror.simple + path)
        assert reply.status == 301, path
        assert reply.headers["location"] == target
    assert http(mirror.base + "/simple").headers["location"] == "/pypi/simple/"
    reply = http(mirror.simple + f"Demo_Pkg/?format={V1_JSON}")
    assert reply.headers["location"] == f"/pypi/simple/demo-pkg/?format={V1_JSON}"


def test_unknown_project_is_404_and_upstream_asked_once(mirror: Mirror, upstream: FakePyPI) -> None:
    assert http(mirror.simple + "no-such-thing/").status == 404
    assert http(mirror.simple + "no-such-thing/").status == 404
    assert len(upstream.requests_matching("/pypi/no-such-thing/json")) == 1


def test_concurrent_requests_cause_one_upstream_fetch(tmp_path: Path, upstream: FakePyPI) -> None:
    upstream.delay("/pypi/demo-pkg/json", 1.0)
    with (
        Mirror(tmp_path, upstream.url, upstream.files_url, workers=2) as mirror,
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        replies = list(pool.map(lambda _: http(mirror.simple + "demo-pkg/"), range(16)))
    assert {r.status for r in replies} == {200}
    assert len(upstream.requests_matching("/pypi/demo-pkg/json")) == 1


def test_on_demand_page_refreshed_after_ttl(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(tmp_path, upstream.url, upstream.files_url, upstream={"page_ttl": "1s"}) as mirror:
        assert b"2.0" not in http(mirror.simple + "demo-pkg/").body
        upstream.add_wheel("demo-pkg", "2.0")
        assert b"demo_pkg-2.0" not in http(mirror.simple + "demo-pkg/").body  # still fresh
        time.sleep(1.3)
        # Stale-while-revalidate: the stale page answers at once and starts one refresh...
        stale = http(mirror.simple + "demo-pkg/")
        assert stale.status == 200
        assert b"demo_pkg-2.0" not in stale.body
        # ...whose result the next requests get.
        page = mirror.wait_for(
            lambda: (r := http(mirror.simple + "demo-pkg/")).body.count(b"demo_pkg-2.0") and r
        )
        assert page, "the stale page was never refreshed"
        assert page.headers["x-pypi-last-serial"] == str(upstream.project_serial("demo-pkg"))
        assert len(upstream.requests_matching("/pypi/demo-pkg/json")) == 2


def test_stale_page_kept_when_refresh_fails(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(tmp_path, upstream.url, upstream.files_url, upstream={"page_ttl": "1s"}) as mirror:
        assert http(mirror.simple + "demo-pkg/").status == 200
        time.sleep(1.2)
        upstream.fail("/pypi/demo-pkg/json", status=500, times=None)
        assert http(mirror.simple + "demo-pkg/").status == 200


def test_upstream_errors_become_502_and_504(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(tmp_path, upstream.url, upstream.files_url, timeouts={"upstream": "1s"}) as mirror:
        upstream.fail("/pypi/demo-pkg/json", status=500, times=None)
        assert http(mirror.simple + "demo-pkg/").status == 502
        upstream.clear_faults()
        upstream.delay("/pypi/demo-pkg/json", 3.0)
        started = time.monotonic()
        assert http(mirror.simple + "demo-pkg/").status == 504
        assert time.monotonic() - started < 2.9


def test_relative_and_absolute_upstream_urls_map_to_same_paths(
    mirror: Mirror, upstream: FakePyPI
) -> None:
    upstream.add_wheel("rel-pkg", "1.0")
    upstream.set_relative_urls("rel-pkg")
    doc = http(mirror.simple + "rel-pkg/", headers={"Accept": V1_JSON}).json()
    wheel = upstream.files("rel-pkg")[0]
    assert doc["files"][0]["url"] == f"../../packages/{wheel.path}"


def test_root_index_exists_before_any_sync(mirror: Mirror) -> None:
    html = http(mirror.simple)
    assert html.status == 200 and html.headers["content-type"] == "text/html"
    doc = http(mirror.simple, headers={"Accept": V1_JSON}).json()
    assert doc["projects"] == [] and doc["meta"]["api-version"] == "1.1"


def test_root_index_gzip_and_serial(mirror: Mirror) -> None:
    simple = mirror.repo / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    body = b'{"meta":{"api-version":"1.1","_last-serial":77},"projects":[]}'
    (simple / "index.v1.json").write_bytes(body)
    (simple / "index.v1.json.gz").write_bytes(gzip.compress(body))
    (simple / "index.html").write_bytes(b"<html></html>")
    plain = http(mirror.simple, headers={"Accept": V1_JSON})
    assert plain.body == body
    assert plain.headers["x-pypi-last-serial"] == "77"
    zipped = http(mirror.simple, headers={"Accept": V1_JSON, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == body
    assert http(mirror.simple).body == b"<html></html>"


# -- files -----------------------------------------------------------------------------------


def test_local_file_head_range_and_conditional(mirror: Mirror, upstream: FakePyPI) -> None:
    wheel = upstream.files("demo-pkg")[0]
    place_local(mirror, wheel)
    url = f"{mirror.base}/packages/{wheel.path}"
    full = http(url)
    assert full.status == 200 and full.body == wheel.content
    assert full.headers["accept-ranges"] == "bytes"
    head = http(url, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) == wheel.size
    part = http(url, headers={"Range": "bytes=10-19"})
    assert part.status == 206 and part.body == wheel.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{wheel.size}"
    tail = http(url, headers={"Range": "bytes=-5"})
    assert tail.status == 206 and tail.body == wheel.content[-5:]
    assert http(url, headers={"Range": f"bytes={wheel.size + 10}-"}).status == 416
    bogus = http(url, headers={"Range": "bytes=abc"})
    assert bogus.status == 200 and bogus.body == wheel.content
    etag = full.headers["etag"]
    assert http(url, headers={"If-None-Match": etag}).status == 304
    assert http(url, headers={"If-Modified-Since": full.headers["last-modified"]}).status == 304
    assert http(url, headers={"If-None-Match": '"other"'}).status == 200
    # served locally: the upstream never saw it
    assert not upstream.requests_matching(wheel.path)


def test_uncached_file_redirects_by_default(mirror: Mirror, upstream: FakePyPI) -> None:
    wheel = upstream.files("demo-pkg")[0]
    reply = http(f"{mirror.base}/packages/{wheel.path}")
    assert reply.status == 302
    assert reply.headers["location"] == f"{upstream.files_url}/packages/{wheel.path}"


def test_proxy_mode_streams_with_range_and_keeps_status(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(
        tmp_path, upstream.url, upstream.files_url, fallback={"default": "proxy"}
    ) as mirror:
        wheel = upstream.files("demo-pkg")[0]
        url = f"{mirror.base}/packages/{wheel.path}"
        reply = http(url)
        assert reply.status == 200 and reply.body == wheel.content
        part = http(url, headers={"Range": "bytes=0-9"})
        assert part.status == 206 and part.body == wheel.content[:10]
        head = http(url, method="HEAD")
        assert head.status == 200 and int(head.headers["content-length"]) == wheel.size
        missing = wheel.path.rsplit("/", 1)[0] + "/missing-1.0.tar.gz"
        assert http(f"{mirror.base}/packages/{missing}").status == 404
        entries = mirror.log_entries()
        proxied = [e for e in entries if e["path"].endswith(wheel.filename)]
        assert proxied and all(e["proxied"] == "1" for e in proxied)
        assert proxied[0]["bytes"] == wheel.size


def test_proxy_mode_upstream_failures(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(
        tmp_path,
        upstream.url,
        upstream.files_url,
        fallback={"default": "proxy"},
        timeouts={"upstream": "1s"},
    ) as mirror:
        wheel = upstream.files("demo-pkg")[0]
        url = f"{mirror.base}/packages/{wheel.path}"
        upstream.fail(wheel.filename, status=503, times=1)
        assert http(url).status == 503  # the upstream's status is kept
        upstream.delay(wheel.filename, 3.0)
        assert http(url).status == 504
        upstream.clear_faults()
        upstream.truncate(wheel.filename)
        with pytest.raises(Exception):  # noqa: B017 - a short body must not look complete
            http(url)


def test_proxy_mode_unreachable_upstream_is_502(tmp_path: Path, upstream: FakePyPI) -> None:
    from tests.mirror import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with Mirror(tmp_path, upstream.url, dead, fallback={"default": "proxy"}) as mirror:
        wheel = upstream.files("demo-pkg")[0]
        assert http(f"{mirror.base}/packages/{wheel.path}").status == 502


def test_per_cidr_fallback_rules(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(
        tmp_path,
        upstream.url,
        upstream.files_url,
        fallback={"default": "proxy", "rules": [{"cidr": "127.0.0.0/8", "mode": "302"}]},
    ) as mirror:
        wheel = upstream.files("demo-pkg")[0]
        assert http(f"{mirror.base}/packages/{wheel.path}").status == 302


def test_files_found_in_any_tier(tmp_path: Path, upstream: FakePyPI) -> None:
    hot, cold = tmp_path / "ssd", tmp_path / "hdd"
    hot.mkdir()
    cold.mkdir()
    tiers = [{"path": str(hot), "size_limit": "1m"}, {"path": str(cold), "size_limit": "1g"}]
    with Mirror(tmp_path, upstream.url, upstream.files_url, cache={"tiers": tiers}) as mirror:
        first, second = upstream.files("demo-pkg")[:2]
        place_local(mirror, first, hot)
        place_local(mirror, second, cold)
        assert http(f"{mirror.base}/packages/{first.path}").body == first.content
        assert http(f"{mirror.base}/packages/{second.path}").body == second.content


# -- JSON API and web ------------------------------------------------------------------------


def test_json_api_local_then_proxied(mirror: Mirror, upstream: FakePyPI) -> None:
    proxied = http(f"{mirror.base}/demo-pkg/json")
    assert proxied.status == 200
    assert proxied.json()["info"]["name"] == "demo-pkg"
    http(mirror.simple + "demo-pkg/")  # stores json/demo-pkg
    upstream.clear_requests()
    local = http(f"{mirror.base}/demo-pkg/json")
    assert local.status == 200 and local.json()["last_serial"] == upstream.project_serial(
        "demo-pkg"
    )
    assert local.headers["x-pypi-last-serial"] == str(upstream.project_serial("demo-pkg"))
    assert not upstream.requests_matching("/pypi/demo-pkg/json")
    release = http(f"{mirror.base}/demo-pkg/1.0/json")
    assert release.status == 200 and release.json()["info"]["version"] == "1.0"
    assert http(f"{mirror.base}/Demo_Pkg/json").status == 301
    assert http(f"{mirror.base}/nothing-here/json").status == 404


def test_web_redirects_to_upstream(mirror: Mirror, upstream: FakePyPI) -> None:
    reply = http(f"{mirror.base}/web/project/demo-pkg/")
    assert reply.status == 302
    assert reply.headers["location"] == f"{upstream.url}/project/demo-pkg/"


# -- votes, client IPs, access log, lifecycle ----------------------------------------------


def test_votes_and_access_log(mirror: Mirror, upstream: FakePyPI) -> None:
    wheel = upstream.files("demo-pkg")[0]
    url = f"{mirror.base}/packages/{wheel.path}"
    http(url, headers={"User-Agent": "pip/24.0"})
    http(url, headers={"User-Agent": "pip/24.0"})  # same prefix within dedup_window
    http(url, headers={"User-Agent": "bandersnatch 6.0"})
    http(url, method="HEAD")
    entries = mirror.log_entries()
    assert mirror.wait_for(lambda: mirror.votes()) == [(wheel.path, "127.0.0.0/24")]
    file_entries = [e for e in entries if e["path"].endswith(wheel.filename)]
    assert len(file_entries) == 4
    first = file_entries[0]
    assert list(first) == [
        "time", "method", "path", "status", "bytes", "duration_ms",
        "client_ip", "user_agent", "referer", "proxied",
    ]  # fmt: skip
    assert first["status"] == 302 and first["client_ip"] == "127.0.0.1"
    assert first["user_agent"] == "pip/24.0" and first["proxied"] == "0"
    assert first["time"].endswith("Z")
    # bots are never refused
    assert file_entries[2]["status"] == 302


def test_forwarded_for_only_from_trusted_proxies(tmp_path: Path, upstream: FakePyPI) -> None:
    wheel = upstream.files("demo-pkg")[0]
    with Mirror(tmp_path, upstream.url, upstream.files_url) as untrusted:
        http(f"{untrusted.base}/packages/{wheel.path}", headers={"X-Forwarded-For": "9.9.9.9"})
        assert untrusted.wait_for(untrusted.votes) == [(wheel.path, "127.0.0.0/24")]
        assert untrusted.log_entries()[-1]["client_ip"] == "127.0.0.1"
    other = tmp_path / "trusted"
    other.mkdir()
    with Mirror(
        other, upstream.url, upstream.files_url, trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"]
    ) as trusted:
        http(
            f"{trusted.base}/packages/{wheel.path}",
            headers={"X-Forwarded-For": "6.6.6.6, 2001:db8:1:2::7, 10.1.1.1"},
        )
        assert trusted.wait_for(trusted.votes) == [(wheel.path, "2001:db8:1::/48")]
        assert trusted.log_entries()[-1]["client_ip"] == "2001:db8:1:2::7"


def test_combined_log_format_and_reopen(tmp_path: Path, upstream: FakePyPI) -> None:
    with Mirror(tmp_path, upstream.url, upstream.files_url, log={"format": "combined"}) as mirror:
        http(mirror.simple + "demo-pkg/", headers={"User-Agent": "uv/0.4", "Referer": "x"})
        line = mirror.wait_for(lambda: mirror.access_log.exists() and mirror.access_log.read_text())
        assert line.startswith("127.0.0.1 - - [")
        assert '"GET /pypi/simple/demo-pkg/ HTTP/1.1" 200 ' in line
        assert line.rstrip().endswith('"x" "uv/0.4"')
        rotated = tmp_path / "access.log.1"
        os.rename(mirror.access_log, rotated)
        mirror.signal(signal.SIGUSR1)
        time.sleep(0.5)
        http(mirror.simple + "demo-pkg/")
        assert mirror.wait_for(lambda: mirror.access_log.exists())
        assert "demo-pkg" in mirror.wait_for(lambda: mirror.access_log.read_text())


def test_graceful_shutdown_drains_votes_from_all_workers(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    wheel = upstream.files("demo-pkg")[0]
    mirror = Mirror(
        tmp_path, upstream.url, upstream.files_url, workers=2, trusted_proxies=["127.0.0.1/32"]
    ).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: http(
                        f"{mirror.base}/packages/{wheel.path}",
                        headers={"X-Forwarded-For": f"10.{i // 256}.{i % 256}.1"},
                    ),
                    range(300),
                )
            )
    finally:
        assert mirror.stop() == 0
    assert len(mirror.votes()) == 300
    assert "database is locked" not in mirror.stderr()


def test_inflight_download_finishes_during_shutdown(tmp_path: Path, upstream: FakePyPI) -> None:
    big = upstream.add_wheel("big-pkg", "1.0", extra_bytes=2_000_000)
    upstream.delay(big.filename, 1.5)
    mirror = Mirror(tmp_path, upstream.url, upstream.files_url, fallback={"default": "proxy"})
    mirror.start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http, f"{mirror.base}/packages/{big.path}")
        time.sleep(0.5)
        code = mirror.stop()
        reply = pending.result()
    assert code == 0
    assert reply.status == 200 and reply.body == big.content


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_lets_the_inflight_download_finish(
    tmp_path: Path, upstream: FakePyPI, workers: int
) -> None:
    """Ctrl-C reaches the master and every worker, and the master passes it on: that echo is
    one request to stop, not two (which would cut the download at once)."""
    big = upstream.add_wheel("big-pkg", "1.0", extra_bytes=2_000_000)
    upstream.delay(big.filename, 1.5)
    mirror = Mirror(
        tmp_path, upstream.url, upstream.files_url, fallback={"default": "proxy"}, workers=workers
    )
    mirror.start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http, f"{mirror.base}/packages/{big.path}")
        time.sleep(0.5)
        mirror.signal_group(signal.SIGINT)
        reply = pending.result()
        assert mirror.process is not None
        code = mirror.process.wait(40)
    assert code == 0
    assert reply.status == 200 and reply.body == big.content
    assert "second signal" not in mirror.stderr()


def test_serial_header_and_yanked_pages(mirror: Mirror, upstream: FakePyPI) -> None:
    wheel = upstream.files("demo-pkg")[0]
    upstream.yank("demo-pkg", wheel.filename, "broken build")
    doc = http(mirror.simple + "demo-pkg/", headers={"Accept": V1_JSON}).json()
    entry = next(f for f in doc["files"] if f["filename"] == wheel.filename)
    assert entry["yanked"] == "broken build"
    assert doc["meta"]["_last-serial"] == upstream.project_serial("demo-pkg")
    html = http(mirror.simple + "demo-pkg/").body
    assert b'data-yanked="broken build"' in html
    assert orjson.loads(http(f"{mirror.base}/demo-pkg/json").body)["last_serial"] > 0
