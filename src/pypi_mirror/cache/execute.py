"""Phase D, execution of the plan: deletions, moves (each once its target has room), downloads
(verified, streamed to a temporary file). Every change is made on disk first and recorded
after."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable

import aiohttp

from pypi_mirror.cache import download as downloader
from pypi_mirror.cache.download import Digest, StopSignal
from pypi_mirror.cache.inventory import DB_BATCH, Inventory
from pypi_mirror.cache.lookup import IndexLookup, digest_for, distribution_path
from pypi_mirror.cache.plan import Action, Plan, Step
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.cache.sizes import Candidates
from pypi_mirror.config import Config
from pypi_mirror.db import Database, LocalFile
from pypi_mirror.progress import Progress
from pypi_mirror.repo import Repo
from pypi_mirror.upstream import UpstreamUrls

log = logging.getLogger(__name__)


class _Ledger:
    """Batches the database side of phase D; every change is on disk before it is here."""

    def __init__(self, db: Database, now: float) -> None:
        self.db = db
        self.now = now
        self.placed: list[LocalFile] = []
        self.removed: list[str] = []
        self.gone: list[str] = []

    def place(self, path: str, size: int, tier: int) -> None:
        self.placed.append(LocalFile(path, size, tier))
        self._maybe_flush()

    def remove(self, path: str) -> None:
        self.removed.append(path)
        self._maybe_flush()

    def mark_gone(self, path: str) -> None:
        self.gone.append(path)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.placed) + len(self.removed) + len(self.gone) >= DB_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.removed:
            self.db.delete_local_files(self.removed)
            self.removed = []
        if self.placed:
            self.db.set_local_files(self.placed)
            self.placed = []
        if self.gone:
            self.db.set_remote_sizes(((path, None) for path in self.gone), now=self.now)
            self.gone = []


class _Executor:
    """Carries out a plan's steps while keeping the live usage of every tier in view: a step
    that would take a tier over its limit (because an earlier step failed) is skipped."""

    def __init__(
        self,
        config: Config,
        repo: Repo,
        db: Database,
        inventory: Inventory,
        result: CacheResult,
        stop: StopSignal,
        now: float,
    ) -> None:
        self.config = config
        self.repo = repo
        self.result = result
        self.stop = stop
        self.limits = [tier.size_limit for tier in repo.tiers]
        self.usage = list(inventory.usage)
        self.counts = list(inventory.counts)
        self.local = dict(inventory.local)  # path -> (size, tier), kept true to the disk
        self.ledger = _Ledger(db, now)
        self.same_device = _same_device_matrix(repo)

    def has_room(self, tier: int, size: int) -> bool:
        return self.usage[tier] + size <= self.limits[tier]

    def delete(self, step: Step) -> None:
        assert step.source is not None
        try:
            self.repo.delete_file(step.source, step.path)
        except OSError as error:
            self.result.fail(f"delete {step.path}: {error}")
            return
        self.usage[step.source] -= step.size
        self.counts[step.source] -= 1
        self.local.pop(step.path, None)
        self.ledger.remove(step.path)
        self.result.deleted_files += 1
        self.result.deleted_bytes += step.size

    async def move(self, step: Step) -> None:
        assert step.source is not None and step.target is not None
        if not self.has_room(step.target, step.size):
            log.warning("not moving %s: tier %d has no room this run", step.path, step.target)
            self.result.skipped += 1
            return
        self.usage[step.target] += step.size  # the copy may exist in both tiers for a while
        try:
            if self.same_device[step.source][step.target]:
                self.repo.move_between_tiers(step.path, step.source, step.target)
            else:
                await asyncio.to_thread(
                    self.repo.move_between_tiers, step.path, step.source, step.target
                )
        except FileNotFoundError:
            # Gone from under us since the inventory: nothing to move, nothing to count.
            self.usage[step.target] -= step.size
            self.usage[step.source] -= step.size
            self.counts[step.source] -= 1
            self.local.pop(step.path, None)
            self.ledger.remove(step.path)
            return
        except OSError as error:
            self.usage[step.target] -= step.size
            self.result.fail(f"move {step.path}: {error}")
            return
        self.usage[step.source] -= step.size
        self.counts[step.source] -= 1
        self.counts[step.target] += 1
        self.local[step.path] = (step.size, step.target)
        self.ledger.place(step.path, step.size, step.target)
        self.result.moved_files += 1
        self.result.moved_bytes += step.size

    async def downloads(
        self,
        steps: list[Step],
        digests: dict[str, Digest],
        session: aiohttp.ClientSession,
        progress: Progress,
    ) -> None:
        urls = UpstreamUrls(self.config)
        sync = self.config.sync
        queue = deque(steps)
        consecutive = 0
        halted = False

        async def worker() -> None:
            nonlocal consecutive, halted
            while queue and not halted and not self.stop.is_set():
                step = queue.popleft()
                assert step.target is not None
                digest = digests.get(step.path)
                if digest is None:
                    log.warning("not downloading %s: no hash to check it against", step.path)
                    self.result.skipped += 1
                    progress.advance()
                    continue
                if not self.has_room(step.target, step.size):
                    self.result.skipped += 1
                    progress.advance()
                    continue
                self.usage[step.target] += step.size  # reserved before the first byte
                outcome = await downloader.download(
                    session,
                    urls.file(step.path),
                    self.repo.tier_file(step.target, step.path),
                    digest=digest,
                    size=step.size,
                    retries=sync.retry,
                    stop=self.stop,
                    backoff=downloader.RETRY_BACKOFF,
                )
                progress.advance()
                if outcome.status == "ok":
                    consecutive = 0
                    self.usage[step.target] += outcome.size - step.size
                    self.counts[step.target] += 1
                    self.local[step.path] = (outcome.size, step.target)
                    self.ledger.place(step.path, outcome.size, step.target)
                    self.result.downloaded_files += 1
                    self.result.downloaded_bytes += outcome.size
                    continue
                self.usage[step.target] -= step.size
                if outcome.status == "gone":
                    self.result.gone += 1
                    self.ledger.mark_gone(step.path)
                elif outcome.status == "error":
                    consecutive += 1
                    self.result.download_errors += 1
                    log.warning("download %s failed: %s", step.path, outcome.reason)
                    self.result.fail(f"download {step.path}: {outcome.reason}")
                    if consecutive >= sync.download_error_threshold and not halted:
                        halted = True
                        self.result.failures.append(
                            f"downloads stopped after {consecutive} consecutive errors "
                            f"({len(queue)} not attempted)"
                        )

        workers = max(1, sync.concurrent_downloads)
        await asyncio.gather(*(worker() for _ in range(workers)))


def _same_device_matrix(repo: Repo) -> list[list[bool]]:
    devices = []
    for tier in repo.tiers:
        try:
            devices.append(os.stat(tier.path).st_dev)
        except OSError:
            devices.append(-1 - tier.index)
    return [[a == b for b in devices] for a in devices]


async def execute_plan(
    config: Config,
    repo: Repo,
    db: Database,
    plan: Plan,
    inventory: Inventory,
    candidates: Candidates,
    result: CacheResult,
    lookup: IndexLookup,
    session_factory: Callable[[], aiohttp.ClientSession],
    *,
    stop: StopSignal,
    now: float,
    progress_bar: bool | None,
) -> _Executor:
    executor = _Executor(config, repo, db, inventory, result, stop, now)
    downloads = [step for step in plan.steps if step.action is Action.DOWNLOAD]
    if not plan.steps:
        return executor
    with Progress("cache", total=len(plan.steps), unit="files", bar=progress_bar) as progress:
        try:
            for step in plan.steps:
                if stop.is_set():
                    result.stopped = True
                    break
                if step.action is Action.DELETE:
                    executor.delete(step)
                elif step.action is Action.MOVE:
                    await executor.move(step)
                else:
                    break  # downloads are last, and run concurrently below
                progress.advance()
            if downloads and not stop.is_set():
                digests = candidates.digests
                missing = [s.path for s in downloads if s.path not in digests]
                entries = lookup.find({distribution_path(path) for path in missing})
                for path in missing:
                    digest = digest_for(path, entries.get(distribution_path(path)))
                    if digest is not None:
                        digests[path] = digest
                await executor.downloads(downloads, digests, session_factory(), progress)
            if stop.is_set():
                result.stopped = True
        finally:
            executor.ledger.flush()
    return executor
