"""Popularity votes: bot filter, the bounded buffer, and the one writer that stores them."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from pypi_mirror.db import Database

log = logging.getLogger(__name__)

BOT_MARKERS = ("bandersnatch", "Googlebot", "bingbot", "YandexBot", "Baiduspider")
# Votes buffered per recorder (one per server worker). A buffered vote costs ~250-300 bytes
# (a tuple, a float and its own path string), so a full buffer is ~25-30 MB. That rides out
# 10 s of a database locked by someone else at 10,000 votes/s into one worker; `sync` holds
# the write lock for ~0.1 s at a time (see Database.CLEANUP_HOLD).
QUEUE_CAPACITY = 100_000
BATCH_SIZE = 5_000  # votes per write transaction; this many buffered wakes the writer early
FLUSH_INTERVAL = 0.5  # otherwise the writer wakes this often
# The writer's wait for another connection's write lock per attempt. It then tries again by
# itself: short attempts poll often enough to slip in between `sync`'s cleanup slices, where
# SQLite's own busy handler, once it has waited a while, only looks every 100 ms.
LOCK_WAIT = 0.01
WAITING_LOG_INTERVAL = 10.0
FAILURE_ATTEMPTS = 5


def is_bot(user_agent: str | None) -> bool:
    """Bots never vote (and are never refused: this only affects votes)."""
    return bool(user_agent) and any(marker in user_agent for marker in BOT_MARKERS)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error)


class VoteRecorder:
    """A bounded buffer in front of a writer thread.

    ``record`` is a list append: it never blocks and never wakes the writer, except once
    each time the buffer reaches ``BATCH_SIZE`` votes. The writer wakes every
    ``FLUSH_INTERVAL`` and stores everything buffered, ``BATCH_SIZE`` votes per transaction.
    A vote leaves the buffer only once stored, so while the database is locked the votes
    wait there; they are dropped (and counted) only when the buffer holds ``capacity``.
    ``close`` stores everything buffered, so no accepted vote is lost on a graceful shutdown.
    """

    def __init__(self, db_path: Path, dedup_window: float, capacity: int = QUEUE_CAPACITY) -> None:
        self._db_path = db_path
        self._dedup_window = dedup_window
        self._capacity = capacity
        self._wake_at = max(1, min(BATCH_SIZE, capacity // 2))
        # Only record() appends and only the writer removes from the front, each with one
        # list operation, so the GIL alone keeps them apart: no lock on the request path.
        self._buffer: list[tuple[str, str, float]] = []
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="vote-writer", daemon=True)
        self.dropped = 0
        self.stored = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Votes accepted but not stored yet."""
        return len(self._buffer)

    def start(self) -> None:
        self._thread.start()

    def record(self, path: str, prefix: str, moment: float | None = None) -> bool:
        """Buffer one vote; False (and counted in ``dropped``) when the buffer is full."""
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            self._drop()
            return False
        buffer.append((path, prefix, time.time() if moment is None else moment))
        if len(buffer) == self._wake_at:
            self._wake.set()
        return True

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "vote buffer full (%d votes waiting for the database): %d votes dropped so far",
                len(self._buffer),
                self.dropped,
            )

    def close(self, timeout: float = 30.0) -> None:
        """Store everything buffered, then stop. Votes recorded from now on are dropped."""
        self._capacity = 0
        if not self._thread.is_alive():
            if self._buffer:
                log.error("vote writer not running: %d votes not stored", len(self._buffer))
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "vote writer did not finish within %.0f s: %d votes not stored",
                timeout,
                len(self._buffer),
            )

    def _run(self) -> None:
        db = Database(self._db_path)
        db.set_busy_timeout(LOCK_WAIT)
        try:
            while True:
                closing = self._closing  # read before the last pass: it sees every vote
                if not closing:
                    self._wake.wait(FLUSH_INTERVAL)
                    self._wake.clear()
                self._store_buffered(db)
                if closing:
                    return
        finally:
            db.close()

    def _store_buffered(self, db: Database) -> None:
        buffer = self._buffer
        waiting_since: float | None = None  # for a warning when the lock is held for long
        logged_at = 0.0
        failures = 0
        while buffer:
            batch = buffer[:BATCH_SIZE]
            try:
                self.stored += db.add_votes(batch, self._dedup_window)
            except sqlite3.OperationalError as error:
                if not _is_busy(error):
                    failures = self._failed(batch, failures)
                    continue
                # Another writer (`sync`, another worker) holds the lock: the votes stay
                # buffered and the next attempt follows at once (the attempt itself waited).
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = logged_at = now
                elif now - logged_at >= WAITING_LOG_INTERVAL:
                    logged_at = now
                    log.warning(
                        "vote writer waiting %.0f s for the database lock, %d votes buffered",
                        now - waiting_since,
                        len(buffer),
                    )
                continue
            except Exception:
                failures = self._failed(batch, failures)
                continue
            del buffer[: len(batch)]
            waiting_since = None
            failures = 0

    def _failed(self, batch: list[tuple[str, str, float]], failures: int) -> int:
        """A batch failed for a reason other than the lock: retry a few times, then give up
        on it (so one bad batch cannot stop the others). Returns the new failure count."""
        failures += 1
        log.exception("storing %d votes failed (attempt %d)", len(batch), failures)
        if failures < FAILURE_ATTEMPTS:
            time.sleep(0.5 * failures)
            return failures
        del self._buffer[: len(batch)]
        self.failed += len(batch)
        return 0
