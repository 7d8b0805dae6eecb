"""On-demand index: a project page the local index does not hold is fetched from the
upstream JSON API, rendered by the one renderer, written atomically and served.

One upstream fetch per project at a time: within a worker by a shared future, across
workers by a lock file (the loser re-checks and finds the page written).
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
from pypi_mirror.db import Database
from pypi_mirror.index.render import RenderError
from pypi_mirror.index.store import save_project
from pypi_mirror.repo import Repo
from pypi_mirror.upstream import UpstreamUrls

log = logging.getLogger(__name__)

NEGATIVE_TTL = 60.0  # how long an upstream 404 is remembered
LOCK_SLOTS = 256


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
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ondemand")
        self._local = threading.local()
        self._lock_dir = config.repo_path / ".locks"
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        self.fetches = 0

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # -- freshness -------------------------------------------------------------------------

    def _db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = Database.open(self._config.repo_path)
        return db

    def _is_on_demand(self, name: str, mtime_ns: int) -> bool:
        known = self._owner.get(name)
        if known is not None and known[0] == mtime_ns:
            return known[1]
        row = self._db().get_serial(name)
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
        return True, self._is_on_demand(name, st.st_mtime_ns)

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
        lock_fd = await loop.run_in_executor(self._executor, self._acquire_lock, name)
        try:
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
            try:
                await loop.run_in_executor(self._executor, self._save, body)
            except RenderError as error:
                log.warning("upstream JSON for %s is unusable: %s", name, error)
                raise UpstreamUnavailable(502) from error
            self.fetches += 1
            return True
        finally:
            await loop.run_in_executor(self._executor, os.close, lock_fd)

    def _save(self, body: bytes) -> None:
        save_project(self._repo, self._db(), body, on_demand=True)

    def _acquire_lock(self, name: str) -> int:
        slot = hashlib.blake2b(name.encode(), digest_size=2).digest()[0] % LOCK_SLOTS
        path: Path = self._lock_dir / f"project-{slot:03d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # closing the fd releases it
        return fd

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
