"""Votes recorded by the server while `sync` holds the database: none may be lost.

Phase E once dropped a quarter of the server's votes: its cleanup held SQLite's write lock
for a second at a time while the recorder's 1,000-vote queue filled up. Here the real cleanup
runs on a million old votes while another thread records votes as fast as a busy server.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from pypi_mirror.cache.cleanup import cleanup
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.cache.votes import VoteRecorder
from pypi_mirror.config import config_from_dict
from pypi_mirror.db import DB_FILENAME, Database

WINDOW = 7 * 86400
FILES = 50_000
OLD_VOTES = 1_000_000
NEW_VOTES = 100_000
VOTE_RATE = 25_000  # votes a second the "server" records during the cleanup


def _path(file_id: int) -> str:
    return f"{file_id % 256:02x}/{file_id // 256 % 256:02x}/{file_id:060d}/p{file_id}-1.0.tar.gz"


def _seed(repo: Path, now: float) -> None:
    """Old votes (older than the window) and some in the window, inserted with the indexes
    dropped and built again afterwards: ten times faster than through add_votes.

    Old votes run through the files in time order with some spread, so each cleanup slice
    changes a part of votes_by_file rather than pages all over it: the run stays short,
    and the slices still each hold the lock about as long as they do at full scale."""
    Database.in_repo(repo).close()
    conn = sqlite3.connect(str(repo / DB_FILENAME), isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'votes'"
    ).fetchall()
    rng = random.Random(7)
    conn.execute("BEGIN")
    for name, _sql in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.executemany(
        "INSERT INTO files (id, path) VALUES (?, ?)", ((i, _path(i)) for i in range(1, FILES + 1))
    )
    spread = FILES // 20
    start, step = now - 2 * WINDOW, WINDOW / OLD_VOTES
    conn.executemany(
        "INSERT INTO votes (file_id, prefix, time) VALUES (?, ?, ?)",
        (
            (
                1 + (k * FILES // OLD_VOTES + rng.randrange(spread)) % FILES,
                f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24",
                int(start + k * step),
            )
            for k in range(OLD_VOTES)
        ),
    )
    # In the window: only the first half of the files, so the other half become orphans.
    conn.executemany(
        "INSERT INTO votes (file_id, prefix, time) VALUES (?, ?, ?)",
        (
            (rng.randint(1, FILES // 2), f"10.0.{k % 256}.0/24", int(now - 3600 - k % 3000))
            for k in range(NEW_VOTES)
        ),
    )
    conn.executemany(
        "INSERT INTO remote_sizes (file_id, size, checked_at) VALUES (?, ?, ?)",
        ((i, 1000, now - (30 * 86400 if i % 2 else 60)) for i in range(1, FILES + 1)),
    )
    for _name, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _test_votes(db_path: Path) -> set[tuple[str, str]]:
    conn = sqlite3.connect(str(db_path))
    try:
        return set(
            conn.execute(
                "SELECT f.path, v.prefix FROM votes v JOIN files f ON f.id = v.file_id "
                "WHERE v.prefix LIKE 'test-%'"
            )
        )
    finally:
        conn.close()


def test_no_vote_is_lost_while_phase_e_cleans_up(tmp_path: Path) -> None:
    now = time.time()
    _seed(tmp_path, now)
    db_path = tmp_path / DB_FILENAME
    recorder = VoteRecorder(db_path, dedup_window=300)
    recorder.start()
    recorded: list[tuple[str, str]] = []
    cleaning = threading.Event()
    cleaning.set()
    peak = [0]

    def serve() -> None:
        # Paths of every kind: voted in the window, voted only long ago (their files rows
        # are about to be dropped as orphans), and new. A distinct prefix each: no dedup.
        rng = random.Random(11)
        started = time.monotonic()
        while cleaning.is_set():
            due = int((time.monotonic() - started) * VOTE_RATE)
            while len(recorded) < due:
                n = len(recorded)
                file_id = rng.randint(1, FILES + 1000)
                vote = (_path(file_id), f"test-{n}")
                recorder.record(*vote)  # a drop is counted: checked below
                recorded.append(vote)
            peak[0] = max(peak[0], recorder.pending)
            time.sleep(0.002)

    server = threading.Thread(target=serve)
    server.start()
    result = CacheResult()
    config = config_from_dict({"repo_path": str(tmp_path)})
    db = Database(db_path)
    try:
        started = time.monotonic()
        cleanup(config, db, [], result, now=now)
        took = time.monotonic() - started
        stored_during_cleanup = recorder.stored
    finally:
        cleaning.clear()
        server.join()
        recorder.close()
        db.close()

    print(
        f"cleanup {took:.1f} s: {result.votes_dropped} old votes, {result.files_dropped} "
        f"orphan paths, {result.remote_sizes_dropped} remote sizes; {len(recorded)} votes "
        f"recorded, {stored_during_cleanup} stored meanwhile, peak {peak[0]} buffered"
    )
    assert result.votes_dropped == OLD_VOTES
    assert result.remote_sizes_dropped == FILES // 2
    assert result.files_dropped > 0
    assert len(recorded) >= 10_000
    assert stored_during_cleanup > 0  # the writer got in between the cleanup's slices
    assert recorder.dropped == 0 and recorder.failed == 0
    assert recorder.stored == len(recorded)
    assert _test_votes(db_path) == set(recorded)


def test_record_never_blocks_on_a_locked_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Database.in_repo(tmp_path).close()
    db_path = tmp_path / DB_FILENAME
    locker = sqlite3.connect(str(db_path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # sync, say, in the middle of a long write
    recorder = VoteRecorder(db_path, dedup_window=0, capacity=100)
    recorder.start()
    try:
        with caplog.at_level(logging.WARNING, logger="pypi_mirror.cache.votes"):
            accepted = []
            slowest = 0.0
            for i in range(150):
                started = time.perf_counter()
                accepted.append(recorder.record(_path(i), "test-a"))
                slowest = max(slowest, time.perf_counter() - started)
                time.sleep(0.002)  # let the writer run: it must not make record wait
        assert slowest < 0.05
        assert accepted == [True] * 100 + [False] * 50
        assert recorder.dropped == 50
        assert "1 votes dropped so far" in caplog.text  # the first drop is logged
        time.sleep(1.0)  # the writer has tried (and failed) to store them meanwhile
        assert recorder.stored == 0 and recorder.pending == 100 and recorder.failed == 0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    deadline = time.monotonic() + 10
    while recorder.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorder.pending == 0
    recorder.close()
    assert recorder.stored == 100 and recorder.failed == 0
    assert _test_votes(db_path) == {(_path(i), "test-a") for i in range(100)}
