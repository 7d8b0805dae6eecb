"""`serve` keeps the root index (/simple/) current with the projects it fetched on demand:
every ``upstream.root_refresh`` one worker rewrites it if the serials table changed.

The rewrite runs on a thread of its own (a root at PyPI's size takes seconds), never on an
executor that serves requests; the cross-process lock is only ever tried, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from pypi_mirror.db import STORE_ERRORS, Database, StoreLocation
from pypi_mirror.index.root_fresh import refresh_root_index
from pypi_mirror.repo import Repo

log = logging.getLogger(__name__)

# While `sync` stores projects the table changes all the time: at PyPI's size a rewrite takes
# seconds, so the pause after one is at least this many times as long (≤ 10 % of a thread).
PACE = 10.0

FAILURE_LOG_INTERVAL = 60.0
FAILURE_PAUSE = 2.0  # between tries while the database or the disk fails


class RootRefresher:
    def __init__(self, repo: Repo, store: StoreLocation, interval: float) -> None:
        self._repo = repo
        self._store = store
        self._interval = interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="root-index")
        self._db: Database | None = None  # opened and used on the executor's thread only
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        logged_at = 0.0
        while True:
            started = loop.time()
            pause = self._interval
            try:
                if await loop.run_in_executor(self._executor, self._refresh):
                    took = loop.time() - started
                    log.info("root index rewritten with new serials in %.1f s", took)
                    pause = max(pause, took * PACE)
                if failing_since is not None:
                    log.warning("root index refreshed again")
                    failing_since = None
            except (OSError, *STORE_ERRORS) as error:
                # Once, then every FAILURE_LOG_INTERVAL: a database that is down for an
                # hour must not write a line per interval per worker.
                now = loop.time()
                if failing_since is None or now - logged_at >= FAILURE_LOG_INTERVAL:
                    log.warning("root index not refreshed: %s", str(error).strip())
                    logged_at = now
                    failing_since = failing_since or now
                pause = max(pause, FAILURE_PAUSE)
            await asyncio.sleep(pause)

    def _refresh(self) -> bool:
        if self._db is None:
            self._db = Database.open(self._store, "serve")
        return refresh_root_index(self._repo, self._db)

    def close(self) -> None:
        """Stop the loop; a write in progress finishes on its thread (atomic renames)."""
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
