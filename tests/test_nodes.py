"""Several `serve` nodes on one PostgreSQL and one repository behave as one mirror: one
popularity (votes from every node, deduplicated across nodes), one plan, one `sync` at a time,
pages fetched on demand by one node served by the others. And a PostgreSQL that goes away
under load stops nothing but the counting of votes, which waits in the buffers."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fakepypi import FakeFile, FakePyPI
from tests.mirror import Mirror, deep_merge, http
from tests.pgserver import PostgresServer

PIP = {"User-Agent": "pip/24.0"}


def node(tmp: Path, fake: FakePyPI, repo: Path, tier: Path, url: str, **extra: Any) -> Mirror:
    """A serve node on the shared repo, tier and database; ``extra`` merges into its config."""
    tmp.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "repo_path": str(repo),
        "database": {"url": url},
        "trusted_proxies": ["127.0.0.1/32"],
        "cache": {"tiers": [{"path": str(tier), "size_limit": "1g"}], "dedup_window": "1h"},
        "upstream": {"root_refresh": "200ms"},
        "sync": {"retry": 0},
    }
    return Mirror(tmp, fake.url, fake.files_url, **deep_merge(settings, extra))


def run(mirror: Mirror, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", *args, "-c", str(mirror.config_path)],
        capture_output=True, text=True, timeout=timeout, cwd=mirror.tmp,
    )  # fmt: skip


def start(mirror: Mirror, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pypi_mirror", *args, "-c", str(mirror.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=mirror.tmp,
    )  # fmt: skip


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description is not None else []


def votes_by_file(url: str) -> dict[str, list[str]]:
    rows = query(
        url,
        "SELECT f.path, v.prefix FROM votes v JOIN files f ON f.id = v.file_id "
        "ORDER BY f.path, v.prefix",
    )
    found: dict[str, list[str]] = {}
    for path, prefix in rows:
        found.setdefault(path, []).append(prefix)
    return found


def vote(mirror: Mirror, wheel: FakeFile, client: str) -> int:
    headers = {**PIP, "X-Forwarded-For": client}
    return http(f"{mirror.base}/packages/{wheel.path}", headers=headers).status


def sync_lock_holders(url: str) -> int:
    return len(
        query(url, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 2 AND granted")
    )


@pytest.fixture
def world(
    tmp_path: Path, fake_pypi: FakePyPI, pg_url: str
) -> Iterator[tuple[Mirror, Mirror, dict[str, FakeFile]]]:
    wheels = {name: fake_pypi.add_wheel(f"{name}-pkg", "1.0") for name in ("hot", "warm", "cold")}
    repo, tier = tmp_path / "shared-repo", tmp_path / "shared-tier"
    tier.mkdir()
    first = node(tmp_path / "node-a", fake_pypi, repo, tier, pg_url)
    second = node(tmp_path / "node-b", fake_pypi, repo, tier, pg_url)
    done = run(first, "sync")  # the index: pages and serials, into the shared repo and DB
    assert done.returncode == 0, done.stdout + done.stderr
    with first, second:
        yield first, second, wheels


def test_two_nodes_make_one_popularity_one_plan_and_one_sync(
    world: tuple[Mirror, Mirror, dict[str, FakeFile]], fake_pypi: FakePyPI, pg_url: str
) -> None:
    a, b, wheels = world
    hot, warm, cold = wheels["hot"], wheels["warm"], wheels["cold"]
    # hot: three networks, one of them through both nodes; warm: one network per node (it
    # reaches min_vote_count only when both nodes' votes count together); cold: one network
    # through both nodes (one vote after dedup: below min_vote_count).
    requests = [
        (a, hot, "10.0.1.7"), (b, hot, "10.0.1.9"), (a, hot, "10.0.2.7"), (b, hot, "10.0.3.7"),
        (a, warm, "10.0.4.7"), (b, warm, "10.0.5.7"),
        (a, cold, "10.0.6.7"), (b, cold, "10.0.6.8"), (b, cold, "10.0.6.9"),
    ]  # fmt: skip
    for mirror, wheel, client in requests:
        assert vote(mirror, wheel, client) == 302  # not cached yet: sent to the upstream
    # The same (file, network) sent at the same moment through both nodes counts once.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        burst = [(m, warm, "10.0.4.200") for m in (a, b) for _ in range(8)]
        assert set(pool.map(lambda r: vote(*r), burst)) == {302}

    expected = {
        hot.path: ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"],
        warm.path: ["10.0.4.0/24", "10.0.5.0/24"],
        cold.path: ["10.0.6.0/24"],
    }
    assert a.wait_for(lambda: votes_by_file(pg_url) == expected, 15), votes_by_file(pg_url)

    # Each node's /metrics counts its own requests only (their values live in one folder per
    # node, though the nodes share the repository).
    def redirects(mirror: Mirror) -> float:
        for line in http(f"{mirror.base}/metrics").body.decode().splitlines():
            if line.startswith('pypi_mirror_requests_total{outcome="302",route="file"}'):
                return float(line.split()[-1])
        return 0.0

    assert a.wait_for(lambda: (redirects(a), redirects(b)) == (12.0, 13.0), 10), (
        redirects(a),
        redirects(b),
    )

    # One sync at a time across hosts: while one runs (held up by a slow upstream), a second
    # started from the other node's config leaves at once and names the holder.
    fake_pypi.delay("/pypi/hot-pkg/json", 3.0)
    fake_pypi.stale("hot-pkg")  # so the index sync fetches it again (serial moved)
    fake_pypi.add_wheel("hot-pkg", "1.1")
    first = start(a, "sync")
    try:
        assert a.wait_for(lambda: sync_lock_holders(pg_url) == 1, 30)
        second = run(b, "sync", timeout=30)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "another sync is running" in second.stdout
        assert "pypi-mirror sync on" in second.stdout  # who: from pg_stat_activity
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out + err
    assert sync_lock_holders(pg_url) == 0

    # One plan from everyone's votes: both files with enough votes are in the shared tier,
    # the one whose duplicate votes were merged across nodes is not.
    tier = Path(a.config["cache"]["tiers"][0]["path"])
    assert (tier / hot.path).read_bytes() == hot.content
    assert (tier / warm.path).read_bytes() == warm.content
    assert not (tier / cold.path).exists()
    # And both nodes now serve them from the shared tier.
    for mirror in (a, b):
        reply = http(f"{mirror.base}/packages/{warm.path}", headers=PIP)
        assert (reply.status, reply.body) == (200, warm.content)


def test_a_page_fetched_on_demand_by_one_node_is_served_by_the_other(
    world: tuple[Mirror, Mirror, dict[str, FakeFile]], fake_pypi: FakePyPI
) -> None:
    a, b, _wheels = world
    fake_pypi.add_wheel("late-pkg", "2.0")  # after the sync: no node holds it
    fake_pypi.clear_requests()
    page_a = http(f"{a.simple}late-pkg/", headers={"Accept": "text/html"})
    assert page_a.status == 200 and b"late_pkg-2.0" in page_a.body
    assert len(fake_pypi.requests_matching("/pypi/late-pkg/json")) == 1
    page_b = http(f"{b.simple}late-pkg/", headers={"Accept": "text/html"})
    assert (page_b.status, page_b.body) == (200, page_a.body)
    assert len(fake_pypi.requests_matching("/pypi/late-pkg/json")) == 1  # not fetched again
    # The root index both nodes serve lists it, from the serial node A recorded.
    assert b.wait_for(lambda: b'href="late-pkg/"' in http(b.simple).body, 20)
    assert http(a.simple).body == http(b.simple).body


def metric(mirror: Mirror, name: str) -> float:
    """A worker-summed sample without labels from the node's /metrics (0 when absent)."""
    for line in http(f"{mirror.base}/metrics").body.decode().splitlines():
        if line.startswith(f"pypi_mirror_{name} "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("buffer", [100_000, 1_000], ids=["buffered", "overflowing"])
def test_postgresql_stopping_under_load_stops_nothing_but_the_counting(
    tmp_path: Path, fake_pypi: FakePyPI, pg_server_private: PostgresServer, buffer: int
) -> None:
    server = pg_server_private
    url = server.create_database("mirror")
    # Durable commits, as in production: a crash must not lose what was acknowledged.
    query(url, "ALTER SYSTEM SET synchronous_commit = on")
    query(url, "SELECT pg_reload_conf()")
    wheel = fake_pypi.add_wheel("busy-pkg", "1.0")
    repo, tier = tmp_path / "repo", tmp_path / "tier"
    tier.mkdir()
    mirror = node(
        tmp_path / "node", fake_pypi, repo, tier, url, workers=2,
        cache={"dedup_window": 0},  # every request is a vote
        database={"vote_buffer": buffer},  # per worker
    )  # fmt: skip
    assert run(mirror, "sync").returncode == 0
    (tier / wheel.path).parent.mkdir(parents=True)
    (tier / wheel.path).write_bytes(wheel.content)  # a local hit: served from disk

    pages: list[int] = []
    files: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            try:
                if count % 5 == 0:
                    pages.append(http(f"{mirror.simple}busy-pkg/").status)
                else:
                    files.append(vote(mirror, wheel, f"10.{worker}.{count % 250}.1"))
            except BaseException as error:  # a refused or cut connection is a failure
                errors.append(error)

    with mirror:
        threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            server.stop("immediate")  # the database goes away mid-traffic
            time.sleep(1.5)
            during = len(files)
            ready = http(f"{mirror.base}/ready")
            time.sleep(1.0)
            metrics = http(f"{mirror.base}/metrics").body.decode()
            during = len(files) - during
            server.start()
            time.sleep(1.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert errors == []
        assert set(pages) == {200} and set(files) == {200}
        assert during > 0  # files were served while the database was down
        assert ready.status == 200, ready.body  # a load balancer keeps the node
        assert ready.body.startswith(b"ready, degraded:"), ready.body
        assert b"database not readable" in ready.body and b"votes:" in ready.body
        unreachable = [
            line for line in metrics.splitlines()
            if line.startswith("pypi_mirror_database_unreachable ")
        ]  # fmt: skip
        assert unreachable and float(unreachable[0].split()[1]) >= 1.0, unreachable
        assert mirror.wait_for(lambda: metric(mirror, "vote_queue_depth") == 0, 15)
        dropped = metric(mirror, "votes_dropped_total")
    # After a graceful stop every vote is in the database or counted as dropped: none lost.
    stored = query(url, "SELECT COUNT(*) FROM votes")[0][0]
    assert stored + dropped == len(files), (stored, dropped, len(files))
    if buffer == 100_000:
        assert dropped == 0
    else:  # two workers' buffers of 1,000 cannot hold what arrived while it was down
        assert dropped > 0 and "vote buffer full" in mirror.stderr()
    log = mirror.stderr()
    assert "Traceback" not in log
    assert "database unreachable" in log


def test_a_sync_whose_lock_connection_dies_stops_and_says_so(
    tmp_path: Path, fake_pypi: FakePyPI, pg_url: str
) -> None:
    fake_pypi.add_wheel("slow-pkg", "1.0")
    tier = tmp_path / "tier"
    tier.mkdir()
    mirror = node(tmp_path / "node", fake_pypi, tmp_path / "repo", tier, pg_url)
    assert run(mirror, "sync").returncode == 0
    fake_pypi.stale("slow-pkg")
    fake_pypi.add_wheel("slow-pkg", "1.1")  # the next sync fetches it again
    fake_pypi.delay("/pypi/slow-pkg/json", 5.0)
    syncing = start(mirror, "sync")
    try:
        assert mirror.wait_for(lambda: sync_lock_holders(pg_url) == 1, 30)
        # The lock's connection dies (a database restart, a network cut): the server has
        # released the lock, so the run must not go on as if it still held it.
        query(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND objid = 2 AND granted",
        )
        out, err = syncing.communicate(timeout=60)
    finally:
        if syncing.poll() is None:
            syncing.kill()
    assert syncing.returncode == 1, out + err
    assert "the sync lock was lost" in out
    assert "Traceback" not in err
