"""On-demand index: a project page the local index does not hold is fetched from the
upstream JSON API, rendered by the one renderer, written atomically and served.

One upstream fetch per project at a time: within a worker by a shared future, across
workers by a lock file (the loser re-checks and finds the page written).

Locking, and why it cannot deadlock: project names hash to LOCK_SLOTS lock files. Within a
worker, an asyncio.Lock per slot lets one fetch at a time touch that slot's lock file, so the
worker never waits on its own flock. The flock itself is only ever tried with LOCK_NB on the
event loop, between short asyncio sleeps: no thread ever blocks on it, so the executor (which
only runs saves) is always free to finish the holder's work, and a waiter can be cancelled.
The lock is released by closing the descriptor on the event loop, in a ``finally``, so also on
cancellation. The lock only spares the upstream a duplicate fetch (pages are written atomically,
and `sync` writes without it), so a worker that waits longer than the upstream timeout for
another worker's slot fetches anyway rather than hang behind a wedged process.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

from pypi_mirror.config import Config
from pypi_mirror.db import STORE_ERRORS, Database
from pypi_mirror.index.render import RenderError, SimpleExtras
from pypi_mirror.index.simple_json import SimpleJsonReader
from pypi_mirror.index.store import save_project
from pypi_mirror.repo import Repo
from pypi_mirror.upstream import UpstreamUrls

log = logging.getLogger(__name__)

NEGATIVE_TTL = 60.0  # how long an upstream 404 is remembered
# After the database failed, how long pages are served as they are without asking it again
# (a shared PostgreSQL may be down: each try could wait for a connect timeout).
DATABASE_RETRY = 10.0
LOCK_SLOTS = 256
# Polling another worker's lock: start fast (a fetch takes ~0.1 s), back off to a few per second.
_LOCK_POLL_FIRST = 0.005
_LOCK_POLL_MAX = 0.05


def lock_slot(name: str) -> int:
    """The lock file slot of a project name (all workers must agree on it)."""
    return hashlib.blake2b(name.encode(), digest_size=2).digest()[0] % LOCK_SLOTS


class UpstreamUnavailable(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status  # 502 or 504


class OnDemandIndex:
    def __init__(self, config: Config, repo: Repo, urls: UpstreamUrls, get_session: object) -> None:
        self._config = config
        self._repo = repo
        self._urls = urls
        self._get_session = get_session
        self._ttl = config.upstream.page_ttl
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._missing: dict[str, float] = {}
        # name → (page mtime_ns, on_demand): who owns a page, remembered per page version.
        self._owner: dict[str, tuple[int, bool]] = {}
        self._database_down_until = 0.0
        # Saves and ownership lookups: nothing on it ever waits for a lock (module docstring).
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ondemand")
        self._local = threading.local()
        self._lock_dir = config.repo_path / ".locks"
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        self._slot_locks: dict[int, asyncio.Lock] = {}  # at most LOCK_SLOTS
        # How long to wait for another worker's slot before fetching without it: by then the
        # holder's own upstream request has stalled for a whole timeout.
        self._lock_patience = max(5.0, config.timeouts.upstream)
        self._closed = False
        self._simple = SimpleJsonReader(config)
        self.fetches = 0

    def close(self) -> None:
        """Stop: in-flight fetches are cancelled (their locks released), queued saves dropped.

        Called at shutdown after the server drained its requests, so whatever still runs here
        has nobody waiting for it; it must not hold the worker's exit.
        """
        self._closed = True
        for pending in list(self._inflight.values()):
            pending.cancel()
        # A save already running finishes (the interpreter joins the thread at exit); it never
        # waits for anything but the disk.
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- freshness -------------------------------------------------------------------------

    def _db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = Database.open(self._config.store, "serve")
        return db

    def _database_failed(self, error: BaseException) -> None:
        if time.monotonic() >= self._database_down_until:
            log.warning(
                "on-demand pages: database unavailable, serving pages as they are: %s", error
            )
        self._database_down_until = time.monotonic() + DATABASE_RETRY

    def _is_on_demand(self, name: str) -> bool:
        """Whether the page was fetched on demand (so refreshed by us) rather than kept by
        `sync`. Asks the database: runs on the executor, never on the event loop."""
        try:
            mtime_ns = os.stat(self._repo.project_html(name)).st_mtime_ns
        except FileNotFoundError:
            return True
        known = self._owner.get(name)
        if known is not None and known[0] == mtime_ns:
            return known[1]
        if time.monotonic() < self._database_down_until:
            return False
        try:
            row = self._db().get_serial(name)
        except STORE_ERRORS as error:
            self._database_failed(error)
            return False
        on_demand = row is None or row[2]
        if len(self._owner) > 100_000:
            self._owner.clear()
        self._owner[name] = (mtime_ns, on_demand)
        return on_demand

    def needs_fetch(self, name: str) -> tuple[bool, bool]:
        """(page exists, should fetch now)."""
        try:
            st = os.stat(self._repo.project_html(name))
        except FileNotFoundError:
            missing_until = self._missing.get(name)
            if missing_until is not None and missing_until > time.monotonic():
                return False, False
            return False, True
        if time.time() - st.st_mtime < self._ttl:
            return True, False
        # Pages that `sync` maintains are current by its schedule; only on-demand pages age.
        known = self._owner.get(name)
        if known is not None and known[0] == st.st_mtime_ns:
            return True, known[1]
        return True, True  # not known yet: the fetch asks the database first

    # -- fetching --------------------------------------------------------------------------

    async def ensure(self, name: str) -> bool:
        """Make sure the project's pages are present and fresh; False when upstream has none.

        Raises UpstreamUnavailable when the page is absent and the upstream cannot be asked.
        A stale page is kept (and served) when a refresh fails.
        """
        exists, fetch = self.needs_fetch(name)
        if not fetch:
            return exists
        pending = self._inflight.get(name)
        if pending is None:
            if self._closed:
                raise UpstreamUnavailable(502)
            pending = asyncio.ensure_future(self._fetch(name, exists))
            self._inflight[name] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(name, None))
        try:
            return await asyncio.shield(pending)
        except UpstreamUnavailable:
            if exists:
                return True
            raise

    async def _fetch(self, name: str, existed: bool) -> bool:
        loop = asyncio.get_running_loop()
        # A stale page of unknown owner: `sync` keeps it (nothing to fetch, no lock to take)
        # unless the database says it was fetched on demand. Asked on the executor: a shared
        # database is a network round trip away.
        if existed and not await loop.run_in_executor(self._executor, self._is_on_demand, name):
            return True
        slot = lock_slot(name)
        lock = self._slot_locks.get(slot)
        if lock is None:
            lock = self._slot_locks[slot] = asyncio.Lock()
        async with lock:
            lock_fd = await self._lock_slot(slot)
            try:
                return await self._fetch_locked(name)
            finally:
                if lock_fd is not None:
                    os.close(lock_fd)  # releases the flock; instant, so done on the loop

    async def _fetch_locked(self, name: str) -> bool:
        # Another worker may have fetched it while we waited for the lock.
        exists, fetch = self.needs_fetch(name)
        if exists and not fetch:
            return True
        body = await self._download(name)
        if body is None:
            self._missing[name] = time.monotonic() + NEGATIVE_TTL
            if len(self._missing) > 100_000:
                self._missing.clear()
            return False
        # PEP 792 status and PEP 740 provenance: only the upstream's PEP 691 page has them.
        extras = await self._simple.fetch(self._get_session(), name)  # type: ignore[operator]
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._save, body, extras)
        except RenderError as error:
            log.warning("upstream JSON for %s is unusable: %s", name, error)
            raise UpstreamUnavailable(502) from error
        self.fetches += 1
        return True

    def _save(self, body: bytes, extras: SimpleExtras | None) -> None:
        """Write the pages; then record the serial, unless the database is unavailable: the
        page is served all the same and its next refresh (or `sync`) records it."""
        db: Database | None = None
        if time.monotonic() >= self._database_down_until:
            try:
                db = self._db()
            except STORE_ERRORS as error:
                self._database_failed(error)
        try:
            save_project(self._repo, db, body, on_demand=True, extras=extras)
        except STORE_ERRORS as error:  # after the pages were written
            self._database_failed(error)

    async def _lock_slot(self, slot: int) -> int | None:
        """Take the slot's cross-worker lock; its descriptor, or None after too long a wait.

        Only the slot's asyncio.Lock holder calls this, so the flock is never contended
        within the worker; polling keeps every thread free and the wait cancellable.
        """
        path: Path = self._lock_dir / f"project-{slot:03d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._lock_patience
            delay = _LOCK_POLL_FIRST
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    pass
                if loop.time() >= deadline:
                    log.warning(
                        "on-demand lock %s held by another process for over %.0f s; "
                        "fetching without it",
                        path.name,
                        self._lock_patience,
                    )
                    os.close(fd)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LOCK_POLL_MAX)
        except BaseException:  # cancelled while waiting, or flock failed: no fd may leak
            os.close(fd)
            raise

    async def _download(self, name: str) -> bytes | None:
        session: aiohttp.ClientSession = self._get_session()  # type: ignore[operator]
        url = self._urls.project_json(name)
        try:
            async with session.get(url, allow_redirects=False) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    log.warning(
                        "on-demand fetch of %s: upstream answered %d", name, response.status
                    )
                    raise UpstreamUnavailable(502)
                return await response.read()
        except TimeoutError:
            log.warning("on-demand fetch of %s timed out", name)
            raise UpstreamUnavailable(504) from None
        except aiohttp.ClientError as error:
            log.warning("on-demand fetch of %s failed: %s", name, error)
            raise UpstreamUnavailable(502) from None
