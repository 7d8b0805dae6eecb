"""The store (pypi_mirror.db) through its real API, on both backends: the embedded SQLite file
and a real PostgreSQL server (tests/pgserver.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pypi_mirror.cache.votes import VoteRecorder
from pypi_mirror.config import ConfigError, config_from_dict
from pypi_mirror.db import (
    STORE_ERRORS,
    Database,
    LocalFile,
    StoreLocation,
    connection,
    is_busy,
    is_unreachable,
)
from pypi_mirror.db import store as store_module
from pypi_mirror.db.connection import LOCK_NAMESPACE, MIGRATION_LOCK, probe
from pypi_mirror.db.location import parse_database_url, redact
from pypi_mirror.db.locks import CACHE, SYNC, exclusive
from pypi_mirror.db.schema import MIGRATIONS
from tests.pgserver import PostgresServer

WINDOW = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    if request.param == "sqlite":
        return StoreLocation.sqlite(tmp_path / "pypi-mirror.db")
    url = request.getfixturevalue("pg_url")  # only PostgreSQL runs need the server
    return parse_database_url(url, tmp_path)


@pytest.fixture
def db(store_location: StoreLocation) -> Iterator[Database]:
    database = Database.open(store_location)
    yield database
    database.close()


def run_together(
    count: int, work: Callable[[int], Any], meanwhile: Callable[[], None] | None = None
) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at once (``meanwhile()`` runs here while
    they do); re-raise the first error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    return results


def count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count cleanup slices (each _Slicer.run call is one transaction)."""
    calls: list[int] = []
    original = store_module._Slicer.run

    def run(self: Any, work: Callable[[int], int]) -> tuple[int, int]:
        result = original(self, work)
        calls.append(result[0])
        return result

    monkeypatch.setattr(store_module._Slicer, "run", run)
    return calls


# -- migrations ------------------------------------------------------------------------------


def test_new_store_reaches_the_latest_schema(store_location: StoreLocation) -> None:
    assert len(MIGRATIONS) == 4
    db = Database.open(store_location)
    try:
        assert db.schema_version == 4
        assert db.backend == store_location.backend
        db.set_setting("kept", "yes")
    finally:
        db.close()


def test_reopening_a_migrated_store_runs_no_migration(
    store_location: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    Database.open(store_location).close()

    def no_statements(script: str) -> list[str]:
        raise AssertionError("a migration ran on an up-to-date store")

    monkeypatch.setattr(store_module, "statements", no_statements)
    db = Database.open(store_location)
    try:
        assert db.schema_version == len(MIGRATIONS)
        assert db.vote_count() == 0
    finally:
        db.close()


def test_four_nodes_opening_a_fresh_store_at_once_all_succeed(
    store_location: StoreLocation, request: pytest.FixtureRequest
) -> None:
    def open_store(i: int) -> int:
        db = Database.open(store_location, role=f"node {i}")
        try:
            db.set_setting(f"node-{i}", str(i))
            return db.schema_version
        finally:
            db.close()

    if store_location.backend == "sqlite":
        versions = run_together(4, open_store)
    else:
        # Deterministic: all four have found the store empty and wait for the migration lock
        # (held here) before any of them migrates.
        url = store_location.url or ""
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, MIGRATION_LOCK))

            def release_when_all_wait() -> None:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    row = admin.execute(
                        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND NOT granted AND objid::bigint = %s",
                        (MIGRATION_LOCK,),
                    ).fetchone()
                    if row is not None and row[0] == 4:
                        break
                    time.sleep(0.02)
                admin.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, MIGRATION_LOCK))

            versions = run_together(4, open_store, release_when_all_wait)
    assert versions == [len(MIGRATIONS)] * 4
    db = Database.open(store_location)
    try:
        assert db.schema_version == len(MIGRATIONS)
        assert [db.get_setting(f"node-{i}") for i in range(4)] == ["0", "1", "2", "3"]
        assert db.add_votes([("p/x.whl", "1.2.3", 100)], WINDOW) == 1
    finally:
        db.close()


# -- settings and serials ----------------------------------------------------------------------


def test_settings_get_set_overwrite(db: Database) -> None:
    assert db.get_setting("upstream") is None
    db.set_setting("upstream", "https://pypi.org")
    db.set_setting("other", "1")
    assert db.get_setting("upstream") == "https://pypi.org"
    db.set_setting("upstream", "https://example.org")
    assert db.get_setting("upstream") == "https://example.org"
    assert db.get_setting("other") == "1"


def test_serials_set_get_delete_and_types(db: Database) -> None:
    assert db.get_serial("six") is None
    assert db.max_serial() == 0
    db.set_serial("six", 5, now=100.25)
    db.set_serial("numpy", 9, on_demand=True, now=200.5)
    six = db.get_serial("six")
    numpy = db.get_serial("numpy")
    assert six == (5, 100.25, False)
    assert numpy == (9, 200.5, True)
    assert six is not None and numpy is not None
    assert [type(value) for value in six] == [int, float, bool]
    assert [type(value) for value in numpy] == [int, float, bool]
    assert db.max_serial() == 9
    assert type(db.max_serial()) is int

    db.set_serial("six", 12, now=300.0)  # on_demand back to False too
    assert db.get_serial("six") == (12, 300.0, False)
    assert db.max_serial() == 12
    db.delete_serial("six")
    assert db.get_serial("six") is None
    assert db.max_serial() == 9
    db.delete_serial("never-there")
    assert db.max_serial() == 9


def test_serials_signature_changes_on_add_remove_and_move(db: Database) -> None:
    assert db.serials_signature() == "0:0:0"
    db.set_serial("a", 3, now=1.0)
    assert db.serials_signature() == "1:3:3"
    db.set_serial("b", 7, now=1.0)
    assert db.serials_signature() == "2:7:10"
    db.set_serial("a", 4, now=1.0)  # a serial moves, not the maximum
    assert db.serials_signature() == "2:7:11"
    db.delete_serial("a")
    assert db.serials_signature() == "1:7:7"
    db.set_serial("c", 2**40, now=1.0)  # a 64-bit serial sums without a Decimal showing
    assert db.serials_signature() == f"2:{2**40}:{2**40 + 7}"


def test_long_listings_stream_in_batches(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The root index and phase B read their rows a batch at a time (PostgreSQL: a server-side
    cursor), all of them, in order; the connection is usable again afterwards."""
    monkeypatch.setattr(connection, "STREAM_BATCH", 7)
    with db.transaction():
        for number in range(50):
            db.set_serial(f"p{number:03d}", number + 1, now=1.0)
    assert list(db.iter_serials_sorted()) == [(f"p{n:03d}", n + 1) for n in range(50)]
    db.add_votes([(f"f/{n}.whl", "1.2.3", 100.0) for n in range(30)], 300)
    assert len(list(db.vote_totals(0))) == 30
    assert db.max_serial() == 50


def test_iter_serials_sorted_in_byte_order(db: Database) -> None:
    names = ["ab", "é", "a_b", "z", "a.c", "Z", "a-b", "a", "A", "0"]
    for serial, name in enumerate(names, start=1):
        db.set_serial(name, serial, now=1.0)
    listed = list(db.iter_serials_sorted())
    assert [name for name, _ in listed] == [
        "0",
        "A",
        "Z",
        "a",
        "a-b",
        "a.c",
        "a_b",
        "ab",
        "z",
        "é",
    ]
    assert dict(listed) == {name: serial for serial, name in enumerate(names, start=1)}
    assert all(type(serial) is int for _, serial in listed)


# -- votes -------------------------------------------------------------------------------------


def test_add_votes_dedups_within_a_batch(db: Database) -> None:
    stored = db.add_votes(
        [
            ("p/f.whl", "10.0.0", 1000),
            ("p/f.whl", "10.0.0", 1010),  # inside the window: dropped
            ("p/f.whl", "10.0.0", 1059.9),  # still inside (1059 - 1000 < 60)
            ("p/f.whl", "10.0.0", 1060),  # exactly one window later: kept
            ("p/f.whl", "10.0.0", 1070),  # inside the new window
            ("p/f.whl", "10.0.0", 1200.7),  # stored as whole seconds
            ("p/f.whl", "10.0.1", 1010),  # another prefix: counted apart
        ],
        WINDOW,
    )
    assert stored == 4
    votes = db.votes_for("p/f.whl")  # oldest first
    assert votes == [("10.0.0", 1000), ("10.0.1", 1010), ("10.0.0", 1060), ("10.0.0", 1200)]
    assert all(type(moment) is int for _, moment in votes)
    assert db.vote_count() == 4
    assert db.add_votes([], WINDOW) == 0
    # Window 0: every vote counts, duplicates and all.
    assert db.add_votes([("p/g.whl", "1", 5), ("p/g.whl", "1", 5), ("p/g.whl", "1", 4)], 0) == 3
    assert db.add_votes([("p/g.whl", "1", 5)], 0) == 1
    assert sorted(db.votes_for("p/g.whl")) == [("1", 4), ("1", 5), ("1", 5), ("1", 5)]


def test_add_votes_dedups_across_batches(db: Database) -> None:
    assert db.add_votes([("p/f.whl", "1.2.3", 1000)], WINDOW) == 1
    assert db.add_votes([("p/f.whl", "1.2.3", 1030)], WINDOW) == 0
    assert db.add_votes([("p/f.whl", "1.2.3", 1059)], WINDOW) == 0
    # Older than the window: stored again (the boundary itself counts as outside).
    assert db.add_votes([("p/f.whl", "1.2.3", 1060)], WINDOW) == 1
    assert db.add_votes([("p/f.whl", "1.2.3", 1119), ("p/g.whl", "1.2.3", 1119)], WINDOW) == 1
    assert db.add_votes([("p/f.whl", "1.2.3", 5000)], WINDOW) == 1
    assert db.votes_for("p/f.whl") == [("1.2.3", 1000), ("1.2.3", 1060), ("1.2.3", 5000)]
    assert db.votes_for("p/g.whl") == [("1.2.3", 1119)]
    assert db.votes_for("p/unknown.whl") == []
    assert db.vote_count() == 4


def test_same_vote_from_eight_nodes_at_once_counts_once(store_location: StoreLocation) -> None:
    Database.open(store_location).close()

    def node_votes(votes: Callable[[int], list[tuple[str, str, float]]]) -> Callable[[int], int]:
        def work(i: int) -> int:
            node = Database.open(store_location, role=f"node {i}")  # a connection of its own
            try:
                return node.add_votes(votes(i), WINDOW)
            finally:
                node.close()

        return work

    db = Database.open(store_location)
    try:
        for round_number in range(5):
            path = f"p/race-{round_number}.whl"  # a new path: interning races too
            moment = 10_000 + round_number
            stored = run_together(
                8, node_votes(lambda i, path=path, moment=moment: [(path, "1.2.3", moment)])
            )
            assert sorted(stored) == [0] * 7 + [1], round_number
            assert db.votes_for(path) == [("1.2.3", moment)]
        # Distinct prefixes for one file at once: each counts.
        stored = run_together(8, node_votes(lambda i: [("p/shared.whl", f"10.{i}", 20_000)]))
        assert stored == [1] * 8
        assert sorted(db.votes_for("p/shared.whl")) == [(f"10.{i}", 20_000) for i in range(8)]
        assert db.vote_count() == 5 + 8
    finally:
        db.close()


def test_vote_totals_and_most_voted_files(db: Database) -> None:
    assert (
        db.add_votes(
            [
                ("p/a.whl", "x", 100),
                ("p/a.whl", "y", 100),
                ("p/a.whl", "x", 200),
                ("p/b.whl", "z", 150),
                ("p/b.whl", "z", 250),
                ("p/c.whl", "z", 50),
            ],
            WINDOW,
        )
        == 6
    )
    db.set_remote_sizes([("p/a.whl", 1234)], now=99.5)
    db.set_remote_sizes([("p/c.whl", None)], now=42.25)

    def totals(since: float) -> list[tuple[Any, ...]]:
        return sorted(tuple(row) for row in db.vote_totals(since))

    assert totals(0) == [
        ("p/a.whl", 3, 2, 1234, 99.5),
        ("p/b.whl", 2, 1, None, None),
        ("p/c.whl", 1, 1, None, 42.25),
    ]
    assert totals(100) == [("p/a.whl", 3, 2, 1234, 99.5), ("p/b.whl", 2, 1, None, None)]
    assert totals(100.5) == [("p/a.whl", 1, 1, 1234, 99.5), ("p/b.whl", 2, 1, None, None)]
    assert totals(250) == [("p/b.whl", 1, 1, None, None)]
    assert totals(250.001) == []
    for row in totals(0):
        assert [type(value) for value in row[:3]] == [str, int, int]

    assert db.most_voted_files(0, 10) == [("p/a.whl", 3), ("p/b.whl", 2), ("p/c.whl", 1)]
    assert db.most_voted_files(0, 2) == [("p/a.whl", 3), ("p/b.whl", 2)]
    assert db.most_voted_files(100.5, 10) == [("p/b.whl", 2), ("p/a.whl", 1)]
    assert db.most_voted_files(300, 10) == []
    assert all(type(votes) is int for _, votes in db.most_voted_files(0, 10))


def test_cleanup_in_slices(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Database, "CLEANUP_FIRST_SLICE", 50)
    monkeypatch.setattr(Database, "CLEANUP_SCAN", 300)
    monkeypatch.setattr(Database, "CLEANUP_PAUSE", 0.0)
    monkeypatch.setattr(Database, "CLEANUP_CHECKPOINT_ROWS", 500)
    bulk = [f"bulk/{i:04d}.whl" for i in range(1000)]
    # 1000 files x 5 votes, at 1000, 1100, ..., 1400: 5000 votes.
    votes = [(path, "p", 1000 + 100 * step) for step in range(5) for path in bulk]
    assert db.add_votes(votes, WINDOW) == 5000
    assert db.add_votes([("keep/vote.whl", "a", 3000), ("keep/last.whl", "a", 2000)], 60) == 2
    db.set_local_files([LocalFile("keep/local.whl", 11, 0)])
    db.set_remote_sizes([("keep/remote.whl", 22)], now=5000.0)
    db.set_remote_sizes([(path, 7) for path in bulk], now=10.25)
    assert db.vote_count() == 5002

    # Cutoffs: time < cutoff, a fractional cutoff included.
    assert db.count_votes_before(1000) == 0
    assert db.count_votes_before(1200) == 2000
    assert db.count_votes_before(1200.5) == 3000
    assert db.count_votes_before(1201) == 3000
    assert db.count_votes_before(2000.5) == 5001

    slices = count_calls(monkeypatch)
    assert db.delete_votes_before(1000) == 0
    assert slices == [0]
    slices.clear()
    assert db.delete_votes_before(1200.5) == 3000
    assert len(slices) > 1 and sum(slices) == 3000
    assert db.vote_count() == 2002
    assert db.count_votes_before(1200.5) == 0
    assert db.delete_votes_before(2000.5) == 2001  # 1300, 1400 and keep/last's
    assert db.vote_count() == 1
    assert db.votes_for("keep/vote.whl") == [("a", 3000)]

    slices.clear()
    assert db.delete_vote_marks_before(1400) == 0
    assert db.delete_vote_marks_before(1400.5) == 1000  # keeps keep/last's (2000), 3000
    assert len(slices) > 2 and sum(slices) == 1000
    # The marks left still suppress a duplicate; the deleted ones do not.
    assert db.add_votes([("keep/last.whl", "a", 2030)], WINDOW) == 0

    slices.clear()
    assert db.delete_remote_sizes_before(10.25) == 0
    assert db.delete_remote_sizes_before(10.26) == 1000
    assert len(slices) > 3 and sum(slices) == 1000
    assert db.known_sizes(["keep/remote.whl", "bulk/0000.whl"]) == {"keep/remote.whl": 22}

    slices.clear()
    assert db.delete_unreferenced_files() == 1000  # the bulk files, nothing kept
    assert len(slices) > 3 and sum(slices) == 1000
    assert db.delete_unreferenced_files() == 0
    assert db.votes_for("keep/vote.whl") == [("a", 3000)]
    assert db.known_sizes(["keep/local.whl", "keep/remote.whl"]) == {
        "keep/local.whl": 11,
        "keep/remote.whl": 22,
    }
    assert db.add_votes([("keep/last.whl", "a", 2040)], WINDOW) == 0  # its mark still there
    assert db.add_votes([("bulk/0000.whl", "p", 1410)], WINDOW) == 1  # interned anew
    assert db.votes_for("bulk/0000.whl") == [("p", 1410)]


def test_delete_unreferenced_files_keeps_each_kind_of_reference(db: Database) -> None:
    db.add_votes([("ref/vote.whl", "a", 500), ("ref/mark.whl", "a", 100)], WINDOW)
    db.delete_votes_before(101)  # ref/mark.whl: only its vote_last row is left
    db.set_local_files([LocalFile("ref/local.whl", 1, 0), LocalFile("gone/local.whl", 2, 0)])
    db.set_remote_sizes([("ref/remote.whl", None), ("gone/remote.whl", 3)], now=50.0)
    db.delete_local_files(["gone/local.whl"])
    db.delete_remote_sizes_before(50.5)  # both remote sizes go...
    db.set_remote_sizes([("ref/remote.whl", None)], now=60.0)  # ...one comes back
    assert db.delete_unreferenced_files() == 2
    assert db.delete_unreferenced_files() == 0
    assert db.add_votes([("ref/mark.whl", "a", 120)], WINDOW) == 0


# -- local files, remote sizes, traffic, sync runs -------------------------------------------


def test_local_files(db: Database) -> None:
    assert db.all_local_files() == []
    assert db.local_usage() == []
    db.set_local_files(
        [
            LocalFile("a/x.whl", 100, 0),
            LocalFile("b/y.whl", 200, 1),
            LocalFile("c/z.whl", 2**40, 1),
        ]
    )
    assert sorted(db.all_local_files(), key=lambda f: f.path) == [
        LocalFile("a/x.whl", 100, 0),
        LocalFile("b/y.whl", 200, 1),
        LocalFile("c/z.whl", 2**40, 1),
    ]
    assert sorted(db.local_usage()) == [(0, 1, 100), (1, 2, 2**40 + 200)]
    db.set_local_files([LocalFile("a/x.whl", 150, 1)])  # update
    db.delete_local_files(["c/z.whl", "not/there.whl"])
    assert db.local_files_map() == {"a/x.whl": (150, 1), "b/y.whl": (200, 1)}
    assert sorted(db.all_local_files(), key=lambda f: f.path) == [
        LocalFile("a/x.whl", 150, 1),
        LocalFile("b/y.whl", 200, 1),
    ]
    usage = db.local_usage()
    assert usage == [(1, 2, 350)]
    assert [type(value) for value in usage[0]] == [int, int, int]
    for size, tier in db.local_files_map().values():
        assert (type(size), type(tier)) == (int, int)


def test_remote_and_known_sizes(db: Database) -> None:
    db.set_local_files([LocalFile("a/x.whl", 150, 0)])
    db.set_remote_sizes([("a/x.whl", 999), ("r/only.whl", 42), ("r/none.whl", None)], now=10.0)
    wanted = ["a/x.whl", "r/only.whl", "r/none.whl", "not/known.whl"]
    assert db.known_sizes(wanted) == {"a/x.whl": 150, "r/only.whl": 42}  # local wins
    assert db.known_sizes(["r/only.whl"]) == {"r/only.whl": 42}
    assert db.count_remote_sizes_before(10.0) == 0
    assert db.count_remote_sizes_before(10.5) == 3
    db.set_remote_sizes([("r/only.whl", 43), ("r/none.whl", 5)], now=20.0)  # update
    assert db.known_sizes(wanted) == {"a/x.whl": 150, "r/only.whl": 43, "r/none.whl": 5}
    assert db.count_remote_sizes_before(10.5) == 1
    assert db.delete_remote_sizes_before(20.0) == 1
    assert db.known_sizes(wanted) == {"a/x.whl": 150, "r/only.whl": 43, "r/none.whl": 5}
    db.delete_local_files(["a/x.whl"])
    assert db.known_sizes(wanted) == {"r/only.whl": 43, "r/none.whl": 5}


def test_traffic_accumulates(db: Database) -> None:
    db.add_traffic(
        [
            (9, "simple", "hit", 200, 1, 10),
            (10, "simple", "hit", 200, 1, 100),
            (10, "simple", "miss", 200, 2, 300),
        ]
    )
    db.add_traffic([(10, "simple", "hit", 200, 4, 50), (11, "files", "hit", 404, 1, 2**40)])
    assert sorted(db.traffic_since(10)) == [
        (10, "simple", "hit", 200, 5, 150),
        (10, "simple", "miss", 200, 2, 300),
        (11, "files", "hit", 404, 1, 2**40),
    ]
    assert [row[0] for row in db.traffic_since(0)] == [9, 10, 10, 11]
    assert db.traffic_since(12) == []
    assert db.delete_traffic_before(10) == 1
    assert db.delete_traffic_before(10) == 0
    assert len(db.traffic_since(0)) == 3
    for row in db.traffic_since(0):
        assert [type(value) for value in row] == [int, str, str, int, int, int]


def test_sync_runs_keeps_the_last_ones(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Database, "SYNC_RUNS_KEPT", 3)
    assert db.sync_runs(10) == []
    assert db.last_sync_run("ok") is None
    for i in range(6):
        result = "ok" if i % 2 == 0 else "failed"
        db.add_sync_run(100.0 * i, 100.0 * i + 0.5, result, f'{{"run": {i}}}')
    runs = db.sync_runs(10)
    assert runs == [
        (500.0, 500.5, "failed", '{"run": 5}'),
        (400.0, 400.5, "ok", '{"run": 4}'),
        (300.0, 300.5, "failed", '{"run": 3}'),
    ]
    assert [tuple(type(v) for v in run) for run in runs] == [(float, float, str, str)] * 3
    assert db.sync_runs(2) == runs[:2]
    assert tuple(db.last_sync_run("ok") or ()) == (400.0, 400.5, "ok", '{"run": 4}')
    assert tuple(db.last_sync_run("failed") or ()) == (500.0, 500.5, "failed", '{"run": 5}')
    assert db.last_sync_run("aborted") is None


# -- locks -------------------------------------------------------------------------------------


def test_sync_lock_refuses_a_second_holder_and_names_the_first(
    store_location: StoreLocation, tmp_path: Path
) -> None:
    Database.open(store_location).close()
    repo = tmp_path / "repo"
    with exclusive(store_location, repo, SYNC, "sync") as first:
        assert first == type(first)(True, "")
        with exclusive(store_location, repo, SYNC, "cache purge", wait=0) as second:
            assert second.held is False
            assert second.holder.startswith("pypi-mirror sync on ")
            assert f"pid {os.getpid()}" in second.holder
        with exclusive(store_location, repo, CACHE, "cache purge", wait=0) as cache:
            assert cache.held is True  # independent of SYNC
            with exclusive(store_location, repo, CACHE, "prewarm", wait=0) as cache2:
                assert cache2.held is False
                assert "pypi-mirror cache purge" in cache2.holder
            with exclusive(store_location, repo, SYNC, "again", wait=0.3) as third:
                assert third.held is False
    with exclusive(store_location, repo, SYNC, "next sync", wait=0) as after:
        assert after.held is True
    with exclusive(store_location, repo, CACHE, "next cache", wait=0) as after_cache:
        assert after_cache.held is True


def test_lock_waiter_gets_it_when_released(store_location: StoreLocation, tmp_path: Path) -> None:
    Database.open(store_location).close()
    repo = tmp_path / "repo"
    taken = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with exclusive(store_location, repo, SYNC, "sync") as held:
            assert held.held
            taken.set()
            release.wait(10)
            time.sleep(0.3)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(10)
        release.set()
        started = time.monotonic()
        with exclusive(store_location, repo, SYNC, "waiter", wait=10) as held:
            assert held.held is True
            assert 0.2 < time.monotonic() - started < 9
    finally:
        release.set()
        thread.join(10)


def _terminate_lock_holder(url: str, key: int) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        pids = [
            row[0]
            for row in admin.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = %s AND objid::bigint = %s",
                (LOCK_NAMESPACE, key),
            )
        ]
        assert len(pids) == 1
        row = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pids[0],)).fetchone()
        assert row is not None and row[0] is True
        return pids[0]


def test_pg_lock_of_a_dead_connection_is_released(pg_url: str, tmp_path: Path) -> None:
    location = parse_database_url(pg_url, tmp_path)
    Database.open(location).close()
    holder = exclusive(location, tmp_path, SYNC, "sync")
    assert holder.__enter__().held is True
    try:
        with exclusive(location, tmp_path, SYNC, "other", wait=0) as refused:
            assert refused.held is False
        _terminate_lock_holder(pg_url, SYNC.key)
        with exclusive(location, tmp_path, SYNC, "other", wait=5) as taken:
            assert taken.held is True
    finally:
        # Raises on the dead connection: test_pg_lock_holder_leaves_cleanly_after_its_...
        with contextlib.suppress(psycopg.Error):
            holder.__exit__(None, None, None)


def test_pg_lock_holder_leaves_cleanly_after_its_connection_died(
    pg_url: str, tmp_path: Path
) -> None:
    location = parse_database_url(pg_url, tmp_path)
    Database.open(location).close()
    with exclusive(location, tmp_path, SYNC, "sync") as held:
        assert held.held is True
        _terminate_lock_holder(pg_url, SYNC.key)
        time.sleep(0.2)


# -- PostgreSQL only: a server that stops and comes back -------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_pg_store_survives_a_server_restart(
    pg_server_private: PostgresServer, tmp_path: Path, mode: str
) -> None:
    url = pg_server_private.create_database("store")
    with_password = url.replace("postgresql://postgres@", "postgresql://postgres:secret@")
    assert "secret" in with_password
    location = parse_database_url(with_password, tmp_path)  # trust auth: password unused
    assert "secret" not in location.display
    db = Database.open(location)
    try:
        db.set_setting("k", "v")
        assert probe(location, 2) is None
        # The test server runs with synchronous_commit = off: flush the WAL, or an immediate
        # stop (a crash) would lose the last commits, the schema included.
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("CHECKPOINT")
        pg_server_private.stop(mode)  # type: ignore[arg-type]
        for _ in range(2):  # the broken connection, then a refused reconnect
            with pytest.raises(STORE_ERRORS) as failure:
                db.get_setting("k")
            assert is_unreachable(failure.value) is True
            assert "secret" not in str(failure.value)
        message = probe(location, 2)
        assert message is not None
        assert message.startswith("database not readable (PostgreSQL postgresql://postgres@")
        assert "secret" not in message
        pg_server_private.start()
        assert db.get_setting("k") == "v"  # same Database, no reopen
        db.set_setting("k", "w")
        assert db.add_votes([("p/x.whl", "1", 100)], WINDOW) == 1
        assert db.get_setting("k") == "w"
        assert probe(location, 2) is None
    finally:
        db.close()


def test_probe_reports_an_unmigrated_pg_store(pg_url: str, tmp_path: Path) -> None:
    location = parse_database_url(pg_url, tmp_path)
    message = probe(location, 2)
    assert message is not None and message.startswith("database not readable (PostgreSQL ")
    Database.open(location).close()
    assert probe(location, 2) is None


def test_probe_sqlite(tmp_path: Path) -> None:
    location = StoreLocation.sqlite(tmp_path / "pypi-mirror.db")
    message = probe(location, 2)
    assert message is not None and message.startswith(f"database not readable ({location.display})")
    Database.open(location).close()
    assert probe(location, 2) is None


# -- URLs --------------------------------------------------------------------------------------


def test_postgres_url_display_hides_the_password(tmp_path: Path) -> None:
    url = "postgresql://u:secret@127.0.0.1:1/db"
    location = parse_database_url(url, tmp_path)
    assert location.is_postgresql
    assert location.url == url  # kept for connecting
    assert location.display == "PostgreSQL postgresql://u@127.0.0.1:1/db"
    assert redact(url) == "postgresql://u@127.0.0.1:1/db"
    assert redact("postgres://u:secret@[::1]:5432/db") == "postgresql://u@[::1]:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert parse_database_url("postgres://h/db", tmp_path).is_postgresql


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://u:secret@127.0.0.1:notaport/db", "bad host, port or parameter"),
        ("postgresql://u:secret@127.0.0.1:99999/db", "bad host, port or parameter"),
        ("postgresql://u:secret@127.0.0.1/db#frag", "no # allowed"),
        ("mysql://u:secret@127.0.0.1/db", "must start with sqlite:// or postgresql://"),
        ("sqlite://relative.db", "write sqlite:///relative/file.db"),
        ("sqlite:///x.db?mode=ro", "write sqlite:///relative/file.db"),
    ],
)
def test_bad_urls_are_refused_without_the_password(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid url ") as refused:
        parse_database_url(url, tmp_path)
    assert why in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@127.0.0.1/db?password=secret",
        "postgresql://u:12/secret@127.0.0.1/db",
        "postgresql://u:12#secret@127.0.0.1/db",
    ],
)
def test_unusual_password_spellings_do_not_leak(tmp_path: Path, url: str) -> None:
    try:
        shown = parse_database_url(url, tmp_path).display
    except ValueError as error:
        shown = str(error)
    assert "secret" not in shown


def test_password_file_and_password_in_url_conflict(tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("secret\n")
    location = parse_database_url("postgresql://u@h/db", tmp_path, password_file)
    assert location.password() == "secret"
    assert "secret" not in location.display
    with pytest.raises(ValueError, match="not both"):
        parse_database_url("postgresql://u:secret@h/db", tmp_path, password_file)
    with pytest.raises(ValueError, match="only for a postgresql"):
        parse_database_url("sqlite:///x.db", tmp_path, password_file)


@pytest.mark.parametrize(
    "url", ["mysql://x", "mysql://u:secret@h/db", "postgresql://u:secret@h:port/db"]
)
def test_config_refuses_a_bad_database_url(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from_dict({"repo_path": str(tmp_path), "database": {"url": url}})
    assert "database.url" in str(refused.value)
    assert "invalid url" in str(refused.value)
    assert "secret" not in str(refused.value)


def test_config_store_locations(tmp_path: Path) -> None:
    config = config_from_dict({"repo_path": str(tmp_path)})
    assert config.store == StoreLocation.sqlite(tmp_path / "pypi-mirror.db")
    url = "postgresql://u:secret@127.0.0.1:5432/db"
    config = config_from_dict({"repo_path": str(tmp_path), "database": {"url": url}})
    assert config.store == StoreLocation("postgresql", url=url)


# -- SQLite only: file URLs --------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "  ", "sqlite://", "sqlite:///"])
def test_sqlite_default_is_in_the_repo(tmp_path: Path, url: str | None) -> None:
    assert parse_database_url(url, tmp_path) == StoreLocation.sqlite(tmp_path / "pypi-mirror.db")


def test_sqlite_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = parse_database_url("sqlite:///relative.db", tmp_path / "repo")
    assert location == StoreLocation.sqlite(Path("relative.db"))
    nested = parse_database_url("sqlite:///sub/dir/store.db", tmp_path / "repo")
    assert nested.sqlite_path == Path("sub/dir/store.db")
    monkeypatch.chdir(tmp_path)
    Database.open(nested).close()
    assert (tmp_path / "sub" / "dir" / "store.db").is_file()


def test_sqlite_absolute_url(tmp_path: Path) -> None:
    assert parse_database_url("sqlite:////abs/path.db", tmp_path) == StoreLocation.sqlite(
        Path("/abs/path.db")
    )
    target = tmp_path / "elsewhere" / "my store.db"
    location = parse_database_url(f"sqlite:///{str(target).replace(' ', '%20')}", tmp_path)
    assert location.sqlite_path == target
    db = Database.open(location)
    try:
        db.set_setting("k", "v")
    finally:
        db.close()
    assert target.is_file()
    db = Database.open(parse_database_url(f"sqlite:///{target}", tmp_path / "other"))
    try:
        assert db.get_setting("k") == "v"
    finally:
        db.close()


def test_an_unreadable_password_file_is_a_database_failure_not_a_crash(
    tmp_path: Path, pg_url: str
) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("whatever\n")
    location = parse_database_url(pg_url, tmp_path, password_file)
    password_file.unlink()  # rotated away after the config was loaded
    with pytest.raises(psycopg.OperationalError, match=r"cannot read database\.password_file"):
        Database.open(location)
    assert probe(location, 2) is not None


def test_a_vote_for_a_path_the_cleanup_is_removing_is_never_orphaned(
    pg_url: str, tmp_path: Path
) -> None:
    """Phase E drops interned paths nothing refers to while serve nodes vote. A vote for such
    a path must either come before the cleanup's look (and keep the path) or after it (and
    intern the path again); never look the id up before and store it after (a vote for a
    path that no longer exists)."""
    location = parse_database_url(pg_url, tmp_path)
    db, voter = Database.open(location), Database.open(location)
    path = "ab/cd/orphan_pkg-1.0-py3-none-any.whl"
    try:
        db.set_remote_sizes([(path, 10)], now=50.0)
        db.delete_remote_sizes_before(100.0)  # the path stays interned, referenced by nothing
        stored: list[int] = []
        with psycopg.connect(pg_url, autocommit=True) as cleanup:
            # What a cleanup slice does: take vote_last in SHARE mode, then delete the path.
            cleanup.execute("BEGIN")
            cleanup.execute("LOCK TABLE vote_last IN SHARE MODE")
            thread = threading.Thread(
                target=lambda: stored.append(voter.add_votes([(path, "1.2.3", 1000)], 300))
            )
            thread.start()
            deadline = time.monotonic() + 20
            while not cleanup.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted "
                "AND relation = 'vote_last'::regclass"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the vote writer never waited"
                time.sleep(0.02)
            cleanup.execute("DELETE FROM files WHERE path = %s", (path,))
            cleanup.execute("COMMIT")
            thread.join(20)
        assert stored == [1]
        assert db.votes_for(path) == [("1.2.3", 1000)]
    finally:
        db.close()
        voter.close()


@pytest.mark.parametrize(
    ("error", "unreachable", "busy"),
    [
        (psycopg.OperationalError("connection failed"), True, False),  # no answer at all
        (psycopg.errors.ConnectionFailure("x"), True, False),
        (psycopg.errors.AdminShutdown("x"), True, False),
        (psycopg.errors.CannotConnectNow("x"), True, False),
        (psycopg.errors.DeadlockDetected("x"), False, True),  # the statement's, retried
        (psycopg.errors.LockNotAvailable("x"), False, True),
        (psycopg.errors.DiskFull("x"), False, False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_what_counts_as_unreachable_and_what_as_busy(
    error: Exception, unreachable: bool, busy: bool
) -> None:
    """The vote writer keeps votes buffered and reconnects for the first kind, retries the
    batch at once for the second, and gives a batch a few tries for the rest."""
    assert is_unreachable(error) is unreachable
    assert is_busy(error) is busy


def test_a_batch_stored_again_under_its_number_is_not_stored_twice(db: Database) -> None:
    votes = [(f"w/{n}.whl", "1.2.3", 100.0) for n in range(3)]
    assert db.add_votes(votes, 0, ("writer-a", 1)) == 3
    assert db.add_votes(votes, 0, ("writer-a", 1)) == 3  # the retry: reported, not stored
    assert db.vote_count() == 3
    assert db.add_votes(votes, 0, ("writer-b", 1)) == 3  # another writer's batch
    assert db.add_votes(votes[:1], 0, ("writer-a", 2)) == 1
    assert db.add_votes(votes, 0, ("writer-a", 1)) == 0  # older than the last: long in
    assert db.vote_count() == 7
    assert db.delete_vote_writers_before(time.time() + 1) == 2


def test_a_lost_commit_answer_does_not_count_votes_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops after the server committed a batch but before the writer heard:
    the writer retries the same batch under the same number, and it is not stored again."""
    real = Database.add_votes
    batches: list[tuple[str, int] | None] = []

    def answer_lost_once(
        self: Database, votes: Any, window: float, batch: tuple[str, int] | None = None
    ) -> int:
        stored = real(self, votes, window, batch)
        batches.append(batch)
        if len(batches) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return stored

    monkeypatch.setattr(Database, "add_votes", answer_lost_once)
    Database.in_repo(tmp_path).close()
    recorder = VoteRecorder(tmp_path / "pypi-mirror.db", dedup_window=0)
    recorder.start()
    for number in range(10):
        recorder.record(f"f/{number}.whl", "1.2.3", 100.0)
    recorder.close()
    check = Database.in_repo(tmp_path)
    try:
        assert check.vote_count() == 10
    finally:
        check.close()
    assert recorder.stored == 10
    assert len(batches) == 2 and batches[0] == batches[1]  # the same batch, retried
