"""``/health`` and ``/ready`` for load balancers.

``/health`` answers 200 "ok" whenever the worker answers at all. ``/ready`` answers 200 only
when this mirror can do its job: the database is readable, the repository is writable (pages
fetched on demand are written there), the root index is present and the upstream answers
within a few seconds; otherwise 503 with one line per failed dependency.

A shared PostgreSQL that cannot be reached is the exception: every node would fail together
and a load balancer would take the whole mirror out, while each node still serves its files
and pages. So ``/ready`` stays 200 and says "degraded", with why and how many votes wait in
this worker's buffer (they are stored when the database is back, or dropped and counted).

The upstream probe is remembered for a few seconds (a load balancer asks every few seconds,
per worker); a failed probe for less long, so recovery shows soon.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor

import aiohttp

from pypi_mirror.db import StoreLocation
from pypi_mirror.db.connection import probe as probe_database
from pypi_mirror.repo import TEMP_PREFIX, Repo

PROBE_TIMEOUT = 3.0  # seconds for the upstream to answer the probe
PROBE_TTL_OK = 10.0
PROBE_TTL_FAILED = 2.0
DB_TIMEOUT = 2.0


def check_writable(repo: Repo) -> str | None:
    """Why the repository cannot be written to, or None: creates and removes a small file
    where on-demand pages are staged (what `sync` and the server write through)."""
    folder = repo.pages_staging_dir
    probe = folder / f"{TEMP_PREFIX}ready-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"ready\n")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return f"repository not writable: {folder}: {error.strerror or error}"
    return None


def check_root_index(repo: Repo) -> str | None:
    missing = [str(path) for path in (repo.root_html, repo.root_json) if not path.is_file()]
    return f"root index missing: {', '.join(missing)}" if missing else None


class UpstreamProbe:
    """HEAD of the upstream's simple index: any HTTP answer below 500 means reachable."""

    def __init__(self, url: str, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.url = url
        self.session = session
        self._result: str | None = None
        self._until = 0.0
        self._running: asyncio.Future[str | None] | None = None

    async def problem(self) -> str | None:
        """Why the upstream is not usable, or None (remembered a few seconds)."""
        if time.monotonic() < self._until:
            return self._result
        if self._running is None or self._running.done():  # concurrent asks share one
            self._running = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._running)

    async def _probe(self) -> str | None:
        try:
            async with self.session().head(
                self.url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            ) as response:
                status = response.status
            result = None if status < 500 else f"upstream {self.url} answered {status}"
        except TimeoutError:
            result = f"upstream {self.url} did not answer within {PROBE_TIMEOUT:.0f} s"
        except aiohttp.ClientError as error:
            result = f"upstream {self.url} unreachable: {error}"
        self._result = result
        self._until = time.monotonic() + (PROBE_TTL_OK if result is None else PROBE_TTL_FAILED)
        return result


class Readiness:
    """Every dependency checked at once; the local ones on ``executor`` (they touch disks)."""

    def __init__(
        self,
        repo: Repo,
        store: StoreLocation,
        probe: UpstreamProbe,
        executor: Executor,
        vote_backlog: Callable[[], str],
    ) -> None:
        self.repo = repo
        self.store = store
        self.probe = probe
        self.executor = executor
        self.vote_backlog = vote_backlog
        self._database: tuple[float, str | None] = (0.0, None)  # (valid until, problem)

    def _database_problem(self) -> str | None:
        """A PostgreSQL probe is remembered as the upstream's is: a new connection for every
        load balancer check, of every worker of every node, would load the server for
        nothing. (SQLite's is a local file open, done each time as before.)"""
        if not self.store.is_postgresql:
            return probe_database(self.store, DB_TIMEOUT)
        until, problem = self._database
        if time.monotonic() < until:
            return problem
        problem = probe_database(self.store, DB_TIMEOUT)
        ttl = PROBE_TTL_OK if problem is None else PROBE_TTL_FAILED
        self._database = (time.monotonic() + ttl, problem)
        return problem

    def _local_checks(self) -> tuple[list[str], list[str]]:
        problems = [check_writable(self.repo), check_root_index(self.repo)]
        degraded: list[str] = []
        database = self._database_problem()
        if database is not None and self.store.is_postgresql:
            degraded.append(database)
            degraded.append(self.vote_backlog())
        else:
            problems.insert(0, database)
        return [problem for problem in problems if problem], degraded

    async def problems(self) -> tuple[list[str], list[str]]:
        """(what makes this worker not ready, what degrades it but leaves it serving)."""
        loop = asyncio.get_running_loop()
        local = loop.run_in_executor(self.executor, self._local_checks)
        upstream = await self.probe.problem()
        problems, degraded = await local
        return problems + ([upstream] if upstream else []), degraded
