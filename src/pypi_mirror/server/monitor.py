"""A worker's monitoring endpoints and bookkeeping: ``/metrics``, ``/health``, ``/ready``
(at the server's root and under the prefix, as load balancers probe ``/health``) and the
status page at ``{prefix}/``; the once-a-second flush of its counters into the Prometheus
values, and every PERSIST_INTERVAL into the hourly table.

Anything that reads the database or a disk runs on this worker's small monitor executor,
never in the event loop; its results are kept a few seconds, so a scrape, a load balancer
and a reloading browser cost one query now and then.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from pypi_mirror.db import Database
from pypi_mirror.server import metrics, status_page
from pypi_mirror.server.health import Readiness, UpstreamProbe
from pypi_mirror.server.http import Request, Response, method_not_allowed, redirect, text
from pypi_mirror.server.ondemand import OnDemandIndex
from pypi_mirror.server.state import ServerState
from pypi_mirror.server.tally import RequestTally
from pypi_mirror.status import (
    Facts,
    Status,
    most_voted_projects,
    prune_traffic,
    read_facts,
    read_status,
)

NO_STORE = [("Cache-Control", "no-store")]
log = logging.getLogger(__name__)

PERSIST_INTERVAL = 10.0  # seconds between a worker's additions to the hourly table
PRUNE_INTERVAL = 3600.0
FACTS_TTL = 5.0  # database facts of /metrics and the status page
STATUS_TTL = 5.0
TOP_TTL = 60.0  # the most-voted projects: a scan of the window's votes

T = TypeVar("T")
Handler = Callable[[Request], Response | Coroutine[Any, Any, Response]]


class Kept(Generic[T]):
    """A value computed on demand and kept ``ttl`` seconds; callers meanwhile share one
    computation."""

    def __init__(self, ttl: float, compute: Callable[[], Awaitable[T]]) -> None:
        self.ttl = ttl
        self.compute = compute
        self._value: T | None = None
        self._until = 0.0
        self._running: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._value is not None and time.monotonic() < self._until:
            return self._value
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._compute())
        return await asyncio.shield(self._running)

    async def _compute(self) -> T:
        value = await self.compute()
        self._value, self._until = value, time.monotonic() + self.ttl
        return value


class Monitor:
    def __init__(self, state: ServerState, tally: RequestTally, ondemand: OnDemandIndex) -> None:
        self.config = state.config
        self.metrics = metrics.WorkerMetrics(tally, state.votes, ondemand)
        # Two threads: a table write waiting for the database lock leaves one for readers.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="monitor")
        self._local = threading.local()
        self.readiness = Readiness(
            state.repo,
            state.config.store,
            UpstreamProbe(state.urls.simple_root(), state.session),
            self.executor,
            state.votes.backlog,
        )
        self._facts: Kept[Facts] = Kept(FACTS_TTL, lambda: self._in_thread(self._read_facts))
        self._top: Kept[list[tuple[str, int]]] = Kept(
            TOP_TTL, lambda: self._in_thread(self._read_top)
        )
        self._status: Kept[Status] = Kept(STATUS_TTL, self._read_status)
        self._last_persist = time.monotonic()
        self._last_prune = 0.0
        self._persisting: asyncio.Task[None] | None = None

    # -- the database, from the monitor threads ---------------------------------------------

    def _db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = Database.open(self.config.store, "serve")
        return db

    async def _in_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def _read_facts(self) -> Facts:
        return read_facts(self.config, self._db())

    def _read_top(self) -> list[tuple[str, int]]:
        return most_voted_projects(self._db(), time.time() - self.config.cache.vote_window)

    async def _read_status(self) -> Status:
        facts = await self._facts.get()
        top = await self._top.get()
        return await self._in_thread(
            lambda: read_status(self.config, self._db(), facts=facts, top=top)
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: counters into Prometheus values; now and then into the table."""
        self.metrics.flush()
        if time.monotonic() - self._last_persist >= PERSIST_INTERVAL and self._persisting is None:
            self._persisting = asyncio.ensure_future(self.persist())

    async def persist(self) -> None:
        """Add this worker's counts since the last time to the hourly table."""
        self._last_persist = time.monotonic()
        rows = self.metrics.take_hourly()
        prune = time.monotonic() - self._last_prune >= PRUNE_INTERVAL
        try:
            if rows or prune:
                await self._in_thread(lambda: self._store(rows, prune))
            if prune:
                self._last_prune = time.monotonic()
        except Exception as error:
            log.warning("could not store the hourly traffic counts (kept for later): %s", error)
            self.metrics.give_back(rows)
        finally:
            self._persisting = None

    def _store(self, rows: list[tuple[int, str, str, int, int, int]], prune: bool) -> None:
        db = self._db()
        if rows:
            db.add_traffic(rows)
        if prune:
            prune_traffic(db)

    async def close(self) -> None:
        """At shutdown, after the last request: the last counts into the table."""
        if self._persisting is not None:
            await asyncio.gather(self._persisting, return_exceptions=True)
        self.metrics.flush()
        await self.persist()
        self.executor.shutdown(wait=True)

    # -- endpoints ---------------------------------------------------------------------------

    def routes(self, prefix: str) -> dict[str, Handler]:
        """Exact request paths and their handlers."""
        table: dict[str, Handler] = {}
        for base in {"", prefix}:
            table[f"{base}/health"] = self.health
            table[f"{base}/ready"] = self.ready
            table[f"{base}/metrics"] = self.scrape
        table[f"{prefix}/"] = self.status
        if prefix:
            table[prefix] = lambda _request: redirect(301, f"{prefix}/")
        return table

    def health(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed()
        return text(200, "ok", NO_STORE)

    def ready(self, request: Request) -> Response | Coroutine[Any, Any, Response]:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed()
        return self._ready()

    async def _ready(self) -> Response:
        degraded: list[str] = []
        try:
            problems, degraded = await self.readiness.problems()
        except Exception as error:
            log.exception("readiness check failed")
            problems = [f"readiness check failed: {error}"]
        if problems:
            return text(503, "not ready:\n" + "\n".join(problems), NO_STORE)
        if degraded:
            return text(200, "ready, degraded:\n" + "\n".join(degraded), NO_STORE)
        return text(200, "ready", NO_STORE)

    def scrape(self, request: Request) -> Response | Coroutine[Any, Any, Response]:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed()
        return self._scrape()

    async def _scrape(self) -> Response:
        try:
            facts: Facts | None = await self._facts.get()
        except Exception as error:  # the counters still go out; the DB facts are absent
            log.warning("metrics: database facts unavailable: %s", error)
            facts = None
        body = await self._in_thread(lambda: metrics.render(facts))
        return Response(
            200, [("Content-Type", metrics.CONTENT_TYPE), ("Cache-Control", "no-store")], body
        )

    def status(self, request: Request) -> Response | Coroutine[Any, Any, Response]:
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed()
        as_json = status_page.wants_json(request.header(b"accept"), request.query)
        return self._status_page(as_json)

    async def _status_page(self, as_json: bool) -> Response:
        try:
            status = await self._status.get()
        except Exception as error:
            log.exception("status page failed")
            return text(503, f"status unavailable: {error}")
        return status_page.answer(status, as_json)
