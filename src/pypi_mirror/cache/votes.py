"""Popularity votes: bot filter, the bounded queue, and the one writer that stores them."""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from pypi_mirror.db import Database, Vote

log = logging.getLogger(__name__)

BOT_MARKERS = ("bandersnatch", "Googlebot", "bingbot", "YandexBot", "Baiduspider")
QUEUE_CAPACITY = 1000
BATCH_SIZE = 500
FLUSH_INTERVAL = 0.5


def is_bot(user_agent: str | None) -> bool:
    """Bots never vote (and are never refused: this only affects votes)."""
    return bool(user_agent) and any(marker in user_agent for marker in BOT_MARKERS)


class VoteRecorder:
    """A bounded queue in front of a writer thread.

    ``record`` never blocks the request: when the queue is full the vote is dropped and
    counted. ``close`` drains the queue, so no accepted vote is lost on a graceful shutdown.
    """

    def __init__(self, db_path: Path, dedup_window: float, capacity: int = QUEUE_CAPACITY) -> None:
        self._db_path = db_path
        self._dedup_window = dedup_window
        self._queue: queue.Queue[Vote | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="vote-writer", daemon=True)
        self.dropped = 0
        self.stored = 0
        self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def record(self, path: str, prefix: str, moment: float | None = None) -> bool:
        try:
            self._queue.put_nowait(Vote(path, prefix, time.time() if moment is None else moment))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("vote queue full: %d votes dropped so far", self.dropped)
            return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop after storing everything queued so far."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)  # may wait for room: the writer is draining, so it will come
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("vote writer did not finish within %.0f s", timeout)

    def _run(self) -> None:
        db = Database(self._db_path)
        try:
            stopping = False
            while not stopping:
                batch: list[Vote] = []
                item = self._queue.get()
                deadline = time.monotonic() + FLUSH_INTERVAL
                while True:
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                    if len(batch) >= BATCH_SIZE:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                # Drain what is already queued at shutdown without further waiting.
                if stopping:
                    while True:
                        try:
                            extra = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if extra is not None:
                            batch.append(extra)
                self._store(db, batch)
        finally:
            db.close()

    def _store(self, db: Database, batch: list[Vote]) -> None:
        if not batch:
            return
        for attempt in range(5):
            try:
                self.stored += db.add_votes(batch, self._dedup_window)
                return
            except Exception:
                log.exception("storing %d votes failed (attempt %d)", len(batch), attempt + 1)
                time.sleep(0.5 * (attempt + 1))
        self.failed += len(batch)
