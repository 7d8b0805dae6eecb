"""Popularity votes: bot filter, the bounded buffer, and the one writer that stores them."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from pypi_mirror.db import STORE_ERRORS, Database, StoreLocation, is_busy, is_unreachable

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
# PostgreSQL has no single write lock: a vote transaction only waits for another node's
# transaction on the same rows, which takes milliseconds. A lock held longer is a fault.
PG_LOCK_WAIT = 5.0
WAITING_LOG_INTERVAL = 10.0
FAILURE_ATTEMPTS = 5


def is_bot(user_agent: str | None) -> bool:
    """Bots never vote (and are never refused: this only affects votes)."""
    return bool(user_agent) and any(marker in user_agent for marker in BOT_MARKERS)


class VoteRecorder:
    """A bounded buffer in front of a writer thread.

    ``record`` is a list append: it never blocks and never wakes the writer, except once
    each time the buffer reaches ``BATCH_SIZE`` votes. The writer wakes every
    ``FLUSH_INTERVAL`` and stores everything buffered, ``BATCH_SIZE`` votes per transaction.
    A vote leaves the buffer only once stored, so while the database is locked the votes
    wait there; they are dropped (and counted) only when the buffer holds ``capacity``.
    ``close`` stores everything buffered, so no accepted vote is lost on a graceful shutdown.

    A database server that cannot be reached (PostgreSQL down or restarting) is the same
    case as a lock held for long: the votes wait in the buffer, the writer reconnects every
    ``FLUSH_INTERVAL``, and only a full buffer drops (and counts) votes.
    """

    def __init__(
        self, store: StoreLocation | Path, dedup_window: float, capacity: int = QUEUE_CAPACITY
    ) -> None:
        self._store = store if isinstance(store, StoreLocation) else StoreLocation.sqlite(store)
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
        # Each batch goes to the store under (writer, number): a batch whose COMMIT reached
        # the server but whose answer was lost is retried, exactly as it was, and the store
        # sees it is in already. Its size stays fixed until it leaves the buffer.
        self._writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._batch_number = 1
        self._batch_size: int | None = None
        self.unreachable: str | None = None  # why the database cannot be reached, if so
        self._unreachable_since = 0.0
        self._unreachable_logged = 0.0

    @property
    def pending(self) -> int:
        """Votes accepted but not stored yet."""
        return len(self._buffer)

    def backlog(self) -> str:
        """For /ready: what waits in this worker's buffer."""
        return (
            f"votes: {self.pending} buffered in this worker (room for {self._capacity}), "
            f"{self.dropped} dropped since start"
        )

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
        db: Database | None = None
        try:
            while True:
                closing = self._closing  # read before the last pass: it sees every vote
                if not closing:
                    self._wake.wait(FLUSH_INTERVAL)
                    self._wake.clear()
                if db is None and (self._buffer or closing):
                    db = self._connect()
                if db is not None and not self._store_buffered(db):
                    db.close()
                    db = None
                if closing:
                    if self._buffer:
                        log.error("vote writer stopping: %d votes not stored", len(self._buffer))
                    return
        finally:
            if db is not None:
                db.close()

    def _connect(self) -> Database | None:
        """The writer's connection, or None while the database is unreachable."""
        try:
            db = Database(self._store, "serve votes")
        except STORE_ERRORS as error:  # down, or refusing us: the votes wait all the same
            self._unreachable_now(error)
            return None
        db.set_busy_timeout(PG_LOCK_WAIT if db.backend == "postgresql" else LOCK_WAIT)
        return db

    def _unreachable_now(self, error: BaseException) -> None:
        now = time.monotonic()
        if self.unreachable is None:
            self._unreachable_since = self._unreachable_logged = now
            log.warning(
                "vote writer: database unreachable (%s), votes kept in the buffer: %s",
                self._store.display,
                str(error).strip(),
            )
        elif now - self._unreachable_logged >= WAITING_LOG_INTERVAL:
            self._unreachable_logged = now
            log.warning(
                "vote writer: database unreachable for %.0f s, %d votes buffered, %d dropped",
                now - self._unreachable_since,
                len(self._buffer),
                self.dropped,
            )
        self.unreachable = str(error).strip() or type(error).__name__

    def _store_buffered(self, db: Database) -> bool:
        """Store what is buffered; False when the connection was lost (the votes stay)."""
        buffer = self._buffer
        waiting_since: float | None = None  # for a warning when the lock is held for long
        logged_at = 0.0
        failures = 0
        while buffer:
            if self._batch_size is None:
                self._batch_size = min(len(buffer), BATCH_SIZE)
            batch = buffer[: self._batch_size]
            try:
                self.stored += db.add_votes(
                    batch, self._dedup_window, (self._writer, self._batch_number)
                )
            except Exception as error:
                if is_unreachable(error):
                    self._unreachable_now(error)
                    return False
                if not is_busy(error):
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
            self._done_with_batch()
            waiting_since = None
            failures = 0
            if self.unreachable is not None:
                log.warning("vote writer: database reachable again, buffered votes stored")
                self.unreachable = None
        return True

    def _done_with_batch(self) -> None:
        """The batch in flight leaves the buffer (stored, or given up): the next is new."""
        del self._buffer[: self._batch_size]
        self._batch_size = None
        self._batch_number += 1

    def _failed(self, batch: list[tuple[str, str, float]], failures: int) -> int:
        """A batch failed for a reason other than the lock: retry a few times, then give up
        on it (so one bad batch cannot stop the others). Returns the new failure count."""
        failures += 1
        log.exception("storing %d votes failed (attempt %d)", len(batch), failures)
        if failures < FAILURE_ATTEMPTS:
            time.sleep(0.5 * failures)
            return failures
        self._done_with_batch()
        self.failed += len(batch)
        return 0
