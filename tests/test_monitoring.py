"""Monitoring end to end: /metrics of a real 2-worker mirror after known traffic, the status
page (JSON, and HTML in a real headless Chromium), `pypi-mirror status`, and /ready flipping
on each dependency of a real mirror."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chromium import open_page
from tests.fakepypi import FakeFile, FakePyPI
from tests.mirror import Mirror, http

ARTIFACTS = Path(__file__).parent / "artifacts"
TIER_LIMIT = 1 << 30


@dataclass
class Monitored:
    mirror: Mirror
    fake: FakePyPI
    local: FakeFile  # in tier 0
    remote: FakeFile  # not cached: 302 or proxied
    serial: int  # the upstream serial of the sync
    bytes: dict[tuple[str, str], int]  # (route, source) -> body bytes the test received
    settled: bool = False  # every worker's status page shows the test's traffic

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.mirror.port}"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    reply = http(url)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((f"pypi_mirror_{name}", tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """A synced 2-worker mirror that has answered one request of each kind: a tier-0 hit, a
    304, a 302, a proxied file, a proxied upstream failure, a 404, an on-demand page and a
    local page."""
    tmp = tmp_path_factory.mktemp("monitoring")
    with FakePyPI() as fake:
        local = fake.add_wheel("demo-pkg", "1.0")
        remote = fake.add_wheel("demo-pkg", "1.1")
        mirror = Mirror(
            tmp,
            fake.url,
            fake.files_url,
            workers=2,
            trusted_proxies=["127.0.0.1/32"],
            fallback={"default": "302", "rules": [{"cidr": "10.0.0.0/8", "mode": "proxy"}]},
            cache={"size_limit": TIER_LIMIT},
        )
        target = mirror.repo / "packages" / local.path
        target.parent.mkdir(parents=True)
        target.write_bytes(local.content)
        synced = subprocess.run(
            [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(mirror.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert synced.returncode == 0, synced.stdout + synced.stderr
        serial = fake.serial
        fake.add_wheel("late-pkg", "2.0")  # not in the synced index: fetched on demand
        with mirror:
            received: dict[tuple[str, str], int] = {}

            def get(path: str, route: str, source: str, **headers: str) -> int:
                reply = http(mirror.base + path, headers=headers)
                received[(route, source)] = received.get((route, source), 0) + len(reply.body)
                return reply.status

            files = f"/packages/{local.path}"
            first = http(mirror.base + files)
            assert first.status == 200 and first.body == local.content
            received[("file", "local")] = len(first.body)
            assert get(files, "file", "local", **{"If-None-Match": first.headers["etag"]}) == 304
            assert get(f"/packages/{remote.path}", "file", "local") == 302
            proxied = {"X-Forwarded-For": "10.1.2.3"}
            assert get(f"/packages/{remote.path}", "file", "proxy", **proxied) == 200
            fake.fail(remote.path, 503)
            assert get(f"/packages/{remote.path}", "file", "proxy", **proxied) == 503
            assert get("/packages/ab/cd/not-a-file", "file", "local") == 404
            assert get("/simple/late-pkg/", "page", "local") == 200
            assert get("/simple/demo-pkg/", "page", "local") == 200
            # The status page keeps its most-voted list a minute: ask for it only once the
            # three votes are stored (the writer stores every 0.5 s).
            assert mirror.wait_for(lambda: len(mirror.votes()) == 3, timeout=10)
            yield Monitored(mirror, fake, local, remote, serial, received)


def test_metrics_of_two_workers_after_known_traffic(monitored: Monitored) -> None:
    m = monitored
    deadline = time.monotonic() + 10
    while True:  # the workers flush once a second; the vote writer every 0.5 s
        samples = scrape(m.root + "/metrics")
        if value(samples, "votes_stored_total") == 3 and value(
            samples, "requests_total", route="page", outcome="local"
        ):
            break
        assert time.monotonic() < deadline, samples
        time.sleep(0.3)

    # summed over both workers' files
    assert len(list((m.mirror.repo / ".metrics").glob("*/counter_*.db"))) == 2
    assert scrape(m.mirror.base + "/metrics").keys() == samples.keys()  # also under the prefix

    requests = {
        ("file", "tier0"): 1,
        ("file", "304"): 1,
        ("file", "302"): 1,
        ("file", "proxy"): 1,
        ("file", "error"): 1,
        ("file", "404"): 1,
        ("page", "fetched"): 1,
        ("page", "local"): 1,
        ("other", "404"): 1,  # the test harness's start-up probe
    }
    for (route, outcome), count in requests.items():
        assert value(samples, "requests_total", route=route, outcome=outcome) == count, (
            route,
            outcome,
        )
    assert value(samples, "requests_total", route="other", outcome="other") >= 1  # scrapes
    for (route, source), size in m.bytes.items():
        assert value(samples, "sent_bytes_total", route=route, source=source) == size
    size_local, size_remote = m.local.size, m.remote.size
    assert value(samples, "file_requests_total", result="hit") == 2
    assert value(samples, "file_requests_total", result="miss") == 2
    assert value(samples, "file_bytes_total", result="hit") == size_local
    assert value(samples, "file_bytes_total", result="miss") == size_remote
    assert value(samples, "file_hit_ratio", by="requests") == 0.5
    assert math.isclose(
        value(samples, "file_hit_ratio", by="bytes"), size_local / (size_local + size_remote)
    )

    for route, count in (("file", 6), ("page", 2)):
        assert value(samples, "request_duration_seconds_count", route=route) == count
        assert value(samples, "request_duration_seconds_bucket", route=route, le="+Inf") == count
        assert value(samples, "request_duration_seconds_sum", route=route) > 0
        buckets = [
            v
            for (name, labels), v in samples.items()
            if name.endswith("request_duration_seconds_bucket")
            and not name.endswith("upstream_request_duration_seconds_bucket")
            and ("route", route) in labels
        ]
        assert buckets == sorted(buckets) and len(buckets) == 8  # cumulative, 7 bounds + Inf

    # upstream: the on-demand page (aiohttp: its JSON API document and its PEP 691 page),
    # the proxied file and its failure (relay)
    assert value(samples, "upstream_requests_total", result="2xx") == 3
    assert value(samples, "upstream_requests_total", result="5xx") == 1
    assert value(samples, "upstream_errors_total", kind="5xx") == 1
    assert value(samples, "upstream_request_duration_seconds_count") == 4
    assert value(samples, "ondemand_fetches_total") == 1

    # votes: the hit (its 304 is the same network again), the 302 and the proxied file
    assert value(samples, "votes_stored_total") == 3
    assert value(samples, "votes_dropped_total") == 0
    assert value(samples, "vote_queue_depth") == 0

    # from the database and the config, at scrape time
    tier = {"tier": "0", "path": str(m.mirror.repo / "packages")}
    assert value(samples, "tier_used_bytes", **tier) == size_local
    assert value(samples, "tier_files", **tier) == 1
    assert value(samples, "tier_limit_bytes", **tier) == TIER_LIMIT
    assert value(samples, "index_serial") == m.serial
    assert value(samples, "last_sync_success") == 1
    assert 0 <= value(samples, "last_successful_sync_age_seconds") < 300
    assert value(samples, "last_sync_timestamp_seconds") == pytest.approx(time.time(), abs=300)
    assert value(samples, "last_sync_duration_seconds") > 0
    assert value(samples, "last_sync_projects", kind="new") == 1
    assert value(samples, "last_sync_projects", kind="failed") == 0
    assert value(samples, "last_sync_files", kind="downloaded") == 0
    assert value(samples, "info", version="0.1.0") == 1


def status_json(m: Monitored) -> dict:
    reply = http(m.mirror.base + "/", headers={"Accept": "application/json"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    return orjson.loads(reply.body)


def wait_for_hourly_rows(m: Monitored) -> dict:
    """The workers add their counts to the hourly table every 10 s, and each keeps its page
    5 s: once one worker shows them, 5 s later every worker does."""
    deadline = time.monotonic() + 25
    while True:
        doc = status_json(m)
        if doc["traffic"]["file_hits"] == 2 and doc["traffic"]["file_misses"] == 2:
            break
        assert time.monotonic() < deadline, doc["traffic"]
        time.sleep(0.5)
    if not m.settled:
        time.sleep(5.2)
        m.settled = True
    return doc


def test_status_page_json(monitored: Monitored) -> None:
    m = monitored
    doc = wait_for_hourly_rows(m)
    traffic = doc["traffic"]
    assert traffic["hit_rate"] == 0.5
    assert traffic["hit_bytes"] == m.local.size
    assert traffic["miss_bytes"] == m.remote.size
    assert traffic["window_seconds"] == 7 * 86400
    assert len(traffic["hours"]) == 7 * 24
    assert traffic["hours"][-1]["hits"] == 2
    assert doc["index"]["serial"] == m.serial
    assert doc["index"]["last_sync"]["result"] == "ok"
    assert doc["index"]["last_sync"]["summary"]["projects_new"] == 1
    assert doc["tiers"] == [
        {
            "index": 0,
            "path": str(m.mirror.repo / "packages"),
            "files": 1,
            "bytes": m.local.size,
            "limit": TIER_LIMIT,
            "share": m.local.size / TIER_LIMIT,
        }
    ]
    assert doc["most_voted"] == [{"project": "demo-pkg", "votes": 3}]
    assert [run["result"] for run in doc["sync_runs"]] == ["ok"]


def test_status_page_in_headless_chromium(monitored: Monitored) -> None:
    m = monitored
    wait_for_hourly_rows(m)
    url = m.mirror.base + "/"
    headers = http(url).headers
    assert "default-src 'none'" in headers["content-security-policy"]
    report = open_page(
        url,
        {
            "charts": "document.querySelectorAll('svg.chart').length",
            "dots": "document.querySelectorAll('svg.chart circle').length",
            "bars": "document.querySelectorAll('svg.chart rect').length",
            "index": "document.getElementById('index').innerText",
            "traffic": "document.getElementById('traffic').innerText",
            "tiers": "document.getElementById('tiers').innerText",
            "projects": "document.getElementById('projects').innerText",
            "runs": "document.getElementById('runs').innerText",
            "scripts": "document.scripts.length",
            "height": "document.body.scrollHeight",
        },
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.write_bytes(report.screenshot)
    print(f"status page screenshot: {shot}")
    assert report.screenshot.startswith(b"\x89PNG")
    assert report.errors == []
    assert report.requested == [url]  # nothing else, from anywhere
    values = report.values
    assert values["charts"] == 2
    assert values["dots"] >= 2  # this hour's hit rates, by requests and by bytes
    assert values["bars"] >= 2  # this hour's hits and misses (and the legend)
    assert values["scripts"] == 0
    assert f"{m.serial:,}" in values["index"] and "ok" in values["index"]
    assert "2 / 2" in values["traffic"] and "50.0%" in values["traffic"]
    assert "demo-pkg\t3" in values["projects"]
    assert "ok" in values["runs"] and "1 new" in values["runs"]
    assert "1" in values["tiers"] and "1.0 GiB" in values["tiers"]
    assert values["height"] > 800


def test_status_command(monitored: Monitored) -> None:
    m = monitored
    wait_for_hourly_rows(m)
    command = [sys.executable, "-m", "pypi_mirror", "status", "-c", str(m.mirror.config_path)]
    env = {**os.environ, "COLUMNS": "160"}
    shown = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for expected in (f"{m.serial:,}", "demo-pkg", "2 / 2", "50.0% by requests", "1 new"):
        assert expected in out, (expected, out)
    as_json = subprocess.run([*command, "--json"], capture_output=True, timeout=30, env=env)
    doc = orjson.loads(as_json.stdout)
    assert doc["traffic"]["file_hits"] == 2
    assert doc["most_voted"] == [{"project": "demo-pkg", "votes": 3}]


def test_status_command_without_a_database(tmp_path: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "pypi_mirror", "status", "--repo-path", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert shown.returncode == 1
    assert "no database" in shown.stdout


# -- /health and /ready ------------------------------------------------------------------------


def ready(mirror: Mirror, path: str = "/ready") -> tuple[int, str]:
    reply = http(f"http://127.0.0.1:{mirror.port}{path}")
    return reply.status, reply.body.decode()


def wait_ready(mirror: Mirror, status: int, timeout: float = 8.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got, body = ready(mirror)
        if got == status:
            return body
        assert time.monotonic() < deadline, (got, body)
        time.sleep(0.2)


def test_ready_flips_with_each_dependency(tmp_path: Path) -> None:
    fake = FakePyPI()  # bound, not listening yet: connections are refused
    try:
        with Mirror(tmp_path, fake.url, fake.files_url) as mirror:
            for path in ("/health", "/pypi/health"):
                assert ready(mirror, path) == (200, "ok\n")
            root = f"http://127.0.0.1:{mirror.port}"
            assert http(root + "/pypi").headers["location"] == "/pypi/"
            for path in ("/metrics", "/ready", "/pypi/"):
                assert http(root + path, method="POST").status == 405
            status, body = ready(mirror)
            assert status == 503
            assert "unreachable" in body and fake.url in body
            assert body.count("\n") == 2  # "not ready:" and the upstream's line only
            assert ready(mirror, "/pypi/ready")[0] == 503

            fake.start()  # the upstream answers now; a failed probe is kept 2 s
            assert wait_ready(mirror, 200) == "ready\n"

            repo = mirror.repo
            index = repo / "simple" / "index.html"
            index.rename(index.with_suffix(".away"))
            status, body = ready(mirror)
            assert status == 503 and f"root index missing: {index}" in body
            index.with_suffix(".away").rename(index)
            assert ready(mirror) == (200, "ready\n")

            staging = repo / ".staging"
            staging.rename(repo / ".staging-away")
            staging.write_text("not a folder")
            status, body = ready(mirror)
            assert status == 503 and "repository not writable" in body, body
            staging.unlink()
            (repo / ".staging-away").rename(staging)
            assert ready(mirror) == (200, "ready\n")

            database = repo / "pypi-mirror.db"
            database.rename(repo / "db-away")
            status, body = ready(mirror)
            assert status == 503 and "database not readable" in body, body
            (repo / "db-away").rename(database)
            assert ready(mirror) == (200, "ready\n")
    finally:
        fake.stop()
