"""Monitoring's parts, in-process: what an answer counts as, the per-worker tally and its cost,
the Prometheus values it flushes into, the hourly table and the sync runs, the charts and the
escaping of the status page."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from pypi_mirror.config import config_from_dict
from pypi_mirror.db import Database
from pypi_mirror.names import dist_filename_of, project_of
from pypi_mirror.server import metrics
from pypi_mirror.server.http import Request
from pypi_mirror.server.status_page import render_html
from pypi_mirror.server.svgchart import Series, line_chart, stacked_bars
from pypi_mirror.server.tally import LATENCY_BOUNDS, RequestTally
from pypi_mirror.status import (
    Facts,
    Status,
    SyncRun,
    TierUsage,
    read_facts,
    read_status,
    record_sync_run,
)
from pypi_mirror.traffic import (
    HOUR,
    file_result,
    hour_of,
    hourly,
    outcome_label,
)

WHEEL = "ab/cd/" + "0" * 60 + "/Demo_Pkg-1.0-py3-none-any.whl"


# -- what an answer counts as ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "outcome", "status", "label", "result"),
    [
        ("file", "tier0", 200, "tier0", "hit"),
        ("file", "tier1", 206, "tier1", "hit"),
        ("file", "tier0", 304, "304", "hit"),  # a revalidated local file
        ("file", "302", 302, "302", "miss"),
        ("file", "proxy", 200, "proxy", "miss"),
        ("file", "proxy", 304, "304", "miss"),  # the upstream revalidated it
        ("file", "proxy", 503, "error", None),
        ("file", "", 404, "404", None),
        ("file", "", 499, "error", None),  # the client left
        ("page", "local", 200, "local", None),
        ("page", "fetched", 200, "fetched", None),
        ("page", "", 301, "other", None),
        ("json", "proxy", 200, "proxy", None),
        ("other", "", 200, "other", None),
    ],
)
def test_outcome_label_and_file_result(
    route: str, outcome: str, status: int, label: str, result: str | None
) -> None:
    assert outcome_label(outcome, status) == label
    assert file_result(route, outcome, status) == result


def test_hourly_sums_and_hit_rates() -> None:
    start = hour_of(1_800_000_000)
    rows = [
        (start, "file", "tier0", 200, 3, 3000),
        (start, "file", "proxy", 200, 1, 1000),
        (start, "file", "302", 302, 4, 0),
        (start, "page", "local", 200, 10, 500),
        (start + 2 * HOUR, "file", "", 404, 1, 20),
        (start - HOUR, "file", "tier0", 200, 99, 99),  # before the window: ignored
    ]
    hours = hourly(rows, start, start + 2 * HOUR)
    assert [h.hour for h in hours] == [start, start + HOUR, start + 2 * HOUR]
    first = hours[0]
    assert (first.requests, first.hits, first.misses) == (18, 3, 5)
    assert (first.hit_bytes, first.miss_bytes, first.proxy_bytes) == (3000, 1000, 1000)
    assert first.hit_rate == 3 / 8
    assert first.byte_hit_rate == 0.75
    assert hours[1].hit_rate is None and hours[1].byte_hit_rate is None
    assert hours[2].requests == 1 and hours[2].hit_rate is None


@pytest.mark.parametrize(
    ("path", "project"),
    [
        (WHEEL, "demo-pkg"),
        (WHEEL + ".metadata", "demo-pkg"),
        ("ab/cd/" + "0" * 60 + "/zope.interface-6.0.tar.gz", "zope-interface"),
        ("ab/cd/" + "0" * 60 + "/Some_Thing-2.0.zip", "some-thing"),
        ("ab/cd/" + "0" * 60 + "/odd.exe", "odd"),
    ],
)
def test_project_of(path: str, project: str) -> None:
    assert project_of(dist_filename_of(path)) == project


# -- the tally: what a request costs -------------------------------------------------------


def _request(route: str, outcome: str) -> Request:
    request = Request("127.0.0.1")
    request.route, request.outcome = route, outcome
    return request


def test_tally_counts_and_takes() -> None:
    tally = RequestTally()
    hit = _request("file", "tier0")
    tally.record(hit, 200, 100, 0.0005)
    tally.record(hit, 200, 50, 0.002)
    tally.record(_request("page", "local"), 304, 0, 20.0)
    taken = tally.take()
    assert {key: counts[:2] for key, counts in taken.requests.items()} == {
        ("file", "tier0", 200): [2, 150],
        ("page", "local", 304): [1, 0],
    }
    latency = taken.latency()
    assert latency["file"][:3] == [1, 1, 0] and latency["file"][-1] == 0.0025
    assert latency["page"][len(LATENCY_BOUNDS)] == 1  # +Inf
    assert tally.requests == {} and tally.latency() == {}


def test_tally_record_costs_about_a_dict_increment(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-request hook, measured (printed with -s; bounded loosely for slow machines)."""
    tally = RequestTally()
    requests = [_request("file", f"tier{i % 2}") for i in range(100)]
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        for request in requests:
            tally.record(request, 200, 1234, 0.0007)
    per_call = (time.perf_counter() - started) / (rounds * len(requests))
    empty = {}
    started = time.perf_counter()
    for _ in range(rounds):
        for request in requests:
            key = (request.route, request.outcome, 200)
            empty[key] = empty.get(key, 0) + 1
    per_increment = (time.perf_counter() - started) / (rounds * len(requests))
    with capsys.disabled():
        print(
            f"\ntally.record: {per_call * 1e9:.0f} ns per request "
            f"(a bare dict increment: {per_increment * 1e9:.0f} ns)"
        )
    assert per_call < 20e-6


async def test_upstream_requests_counted_by_the_session_trace() -> None:
    tally = RequestTally()
    with socket_refusing() as port:
        async with aiohttp.ClientSession(trace_configs=[tally.trace_config()]) as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://127.0.0.1:{port}/")
    assert tally.upstream == {"error": 1}
    assert sum(tally.upstream_latency[:-1]) == 1


class socket_refusing:
    """A port where connections are refused (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- Prometheus values ---------------------------------------------------------------------


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    monkeypatch.delenv(metrics.ENV, raising=False)
    folder = metrics.prepare_metrics_dir(tmp_path / ".metrics")
    monkeypatch.setenv(metrics.ENV, str(folder))
    return folder


def test_flush_and_render(multiprocess_dir: Path) -> None:
    tally = RequestTally()
    votes = SimpleNamespace(stored=5, dropped=1, pending=7, unreachable="connection refused")
    ondemand = SimpleNamespace(fetches=2)
    worker = metrics.WorkerMetrics(tally, votes, ondemand)  # type: ignore[arg-type]
    for seconds in (0.0005, 0.003, 0.003, 30.0):
        tally.record(_request("file", "tier0"), 200, 10, seconds)
    tally.record(_request("file", "302"), 302, 0, 0.0001)
    tally.upstream_answered(200, 0.07)
    tally.upstream_failed(TimeoutError(), 60.0)
    worker.flush(now=7200.5)
    votes.stored = 6
    worker.flush(now=7201)
    facts = Facts(
        now=1000.0,
        serial=42,
        tiers=[TierUsage(0, "/t<0>", 3, 300, 1000)],
        last_run=SyncRun(100.0, 160.0, "failed", {"projects_new": 4, "files_failed": 2}),
        last_success=SyncRun(10.0, 40.0, "ok", {}),
    )
    text = metrics.render(facts).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def get(name: str, **labels: str) -> float:
        return samples[(f"pypi_mirror_{name}", tuple(sorted(labels.items())))]

    assert get("requests_total", route="file", outcome="tier0") == 4
    assert get("requests_total", route="file", outcome="302") == 1
    assert get("file_requests_total", result="hit") == 4
    assert get("file_hit_ratio", by="requests") == 0.8
    assert get("file_hit_ratio", by="bytes") == 1.0
    assert get("sent_bytes_total", route="file", source="local") == 40
    buckets = [
        get("request_duration_seconds_bucket", route="file", le=le)
        for le in ("0.001", "0.005", "0.025", "10.0", "+Inf")
    ]
    assert buckets == [2, 4, 4, 4, 5]  # cumulative
    assert get("request_duration_seconds_sum", route="file") == pytest.approx(30.0066)
    assert get("upstream_requests_total", result="2xx") == 1
    assert get("upstream_requests_total", result="timeout") == 1
    assert get("upstream_errors_total", kind="timeout") == 1
    assert get("upstream_request_duration_seconds_bucket", le="0.1") == 1
    assert get("upstream_request_duration_seconds_count") == 2
    assert get("votes_stored_total") == 6
    assert get("votes_dropped_total") == 1
    assert get("vote_queue_depth") == 7
    assert get("ondemand_fetches_total") == 2
    assert get("tier_used_bytes", tier="0", path="/t<0>") == 300
    assert get("index_serial") == 42
    assert get("last_sync_success") == 0
    assert get("last_sync_duration_seconds") == 60
    assert get("last_successful_sync_age_seconds") == 960
    assert get("last_sync_projects", kind="new") == 4
    assert get("last_sync_files", kind="failed") == 2
    # the hourly rows wait for the table, by the hour of their flush
    rows = worker.take_hourly()
    assert sorted(rows) == [(7200, "file", "302", 302, 1, 0), (7200, "file", "tier0", 200, 4, 40)]
    assert worker.take_hourly() == []


def test_a_dead_workers_counters_stay_and_its_live_gauge_goes(multiprocess_dir: Path) -> None:
    tally = RequestTally()
    votes = SimpleNamespace(stored=0, dropped=0, pending=3, unreachable=None)
    worker = metrics.WorkerMetrics(tally, votes, None)  # type: ignore[arg-type]
    tally.record(_request("page", "local"), 200, 1, 0.001)
    worker.flush()
    import os

    metrics.forget_worker(os.getpid())
    text = metrics.render(None).decode()
    assert 'pypi_mirror_requests_total{outcome="local",route="page"} 1.0' in text
    assert "pypi_mirror_vote_queue_depth " not in text
    assert "pypi_mirror_database_unreachable " not in text


# -- the database: hourly rows, sync runs, facts --------------------------------------------


def _config(repo: Path) -> object:
    return config_from_dict({"repo_path": str(repo), "cache": {"size_limit": "1k"}})


def test_traffic_rows_add_up_and_sync_runs_are_recorded(tmp_path: Path) -> None:
    config = _config(tmp_path)
    db = Database.in_repo(tmp_path)
    assert db.schema_version >= 2
    now = 1_800_003_600.0
    hour = hour_of(now)
    db.add_traffic([(hour, "file", "tier0", 200, 2, 200), (hour, "file", "302", 302, 1, 0)])
    db.add_traffic([(hour, "file", "tier0", 200, 1, 100)])  # another worker's flush
    assert sorted(db.traffic_since(hour)) == [
        (hour, "file", "302", 302, 1, 0),
        (hour, "file", "tier0", 200, 3, 300),
    ]
    db.add_votes([(WHEEL, "10.0.0", now), (WHEEL, "10.0.1", now)], 300)
    record_sync_run(db, now - 60, None, None, ["index sync aborted (boom)"], False)
    facts = read_facts(config, db, now)  # type: ignore[arg-type]
    assert facts.last_run is not None and facts.last_run.result == "failed"
    assert facts.last_success is None and facts.sync_age is None
    assert facts.tiers[0].limit == 1024
    status = read_status(config, db, now)  # type: ignore[arg-type]
    assert status.top_projects == [("demo-pkg", 2)]
    assert status.totals.hits == 3 and status.totals.misses == 1
    assert status.runs[0].summary == {"failures": ["index sync aborted (boom)"]}
    db.SYNC_RUNS_KEPT = 3
    for index in range(5):
        db.add_sync_run(now + index, now + index + 1, "ok", "{}")
    assert len(db.sync_runs(10)) == 3
    assert db.last_sync_run("ok")[0] == now + 4
    db.close()


# -- charts and the page ----------------------------------------------------------------------


def test_line_chart_breaks_at_missing_hours_and_escapes() -> None:
    hours = [HOUR * i for i in range(6)]
    svg = line_chart("<rate>", hours, [Series("a&b", [0.5, 0.6, None, 0.7, None, 1.5], "#123")])
    assert svg.count("<polyline") == 1  # hours 0-1
    assert svg.count("<circle") == 2  # hours 3 and 5, each alone
    assert 'cy="12.0"' in svg  # 150 % is drawn at the top (100 %)
    assert "&lt;rate&gt;" in svg and "a&amp;b" in svg and "<rate>" not in svg


def test_bars_use_whole_steps() -> None:
    svg = stacked_bars("n", [0, HOUR], [("hits", [1, 0], "#1"), ("misses", [0, 1], "#2")])
    labels = [part.split(">")[1].split("<")[0] for part in svg.split("<text")[1:6]]
    assert labels == ["0", "1", "2", "3", "4"]


def test_status_page_escapes_every_string() -> None:
    hostile = "<script>alert(1)</script>"
    status = Status(
        facts=Facts(
            now=2000.0,
            serial=7,
            tiers=[TierUsage(0, f"/srv/{hostile}", 1, 10, 100)],
            last_run=SyncRun(1.0, 2.0, "failed", {"failures": [hostile]}),
            last_success=None,
        ),
        window=86400.0,
        hours=hourly([], 0, 3 * HOUR),
        top_projects=[(hostile, 3)],
        runs=[SyncRun(1.0, 2.0, hostile, {"failures": [hostile]})],
    )
    page = render_html(status).decode()
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4
    assert 'class="&lt;script&gt;' in page  # even as a class name


def test_tasks_run_in_a_loop() -> None:
    """Kept: concurrent callers share one computation, then the value is kept."""
    from pypi_mirror.server.monitor import Kept

    calls = []

    async def compute() -> int:
        calls.append(1)
        await asyncio.sleep(0.01)
        return len(calls)

    async def main() -> list[int]:
        kept: Kept[int] = Kept(60, compute)
        first = await asyncio.gather(kept.get(), kept.get(), kept.get())
        return [*first, await kept.get()]

    assert asyncio.run(main()) == [1, 1, 1, 1]
