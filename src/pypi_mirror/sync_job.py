"""``pypi-mirror sync``: (1) the index sync, (2) cache management, then a summary.

SIGINT/SIGTERM set a stop flag that both phases honour at their next safe point (a project
boundary for the index); a second signal is not caught. The exit status is 0 only when every
part succeeded; otherwise the summary names what failed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from pypi_mirror.cache.manager import run_cache_management
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.cache.report import format_plan as format_cache_plan
from pypi_mirror.config import Config
from pypi_mirror.db import Database, StoreLocation
from pypi_mirror.db import locks as store_locks
from pypi_mirror.index.sync import (
    IndexSyncResult,
    SyncTuning,
    format_plan,
    listing_failed,
    plan_sync,
    sync_index,
)
from pypi_mirror.repo import Repo
from pypi_mirror.status import record_sync_run
from pypi_mirror.upstream import UpstreamError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
# Overlapping runs (a slow sync and the next timer tick, or two hosts' timers) would fetch
# and delete the same projects twice; the second one leaves at once.
INDEX_LOCK = store_locks.SYNC.filename
# How often a running sync makes sure it still holds its lock (on PostgreSQL a dropped
# connection releases it, and another host's sync could start).
LOCK_CHECK_INTERVAL = 2.0


class StopFlag(threading.Event):
    """Set by SIGINT/SIGTERM; remembers which signal, for the exit status (128 + signal)."""

    signum: int | None = None


@contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into ``stop``; the default behaviour comes back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.signum = signum
        stop.set()
        log.warning(
            "%s: stopping at the next safe point (send it again to stop at once)",
            signal.Signals(signum).name,
        )
        for sig, default in defaults.items():
            signal.signal(sig, default)

    for sig in defaults:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, default in defaults.items():
            signal.signal(sig, default)


def run_sync(
    config: Config,
    *,
    dry_run: bool = False,
    tuning: SyncTuning | None = None,
    progress_bar: bool | None = None,
) -> int:
    """Run the whole job; returns the process exit status."""
    tuning = tuning or SyncTuning()
    if dry_run:
        return _dry_run(config, tuning)
    repo = Repo(config)
    repo.create_folders()
    with store_locks.exclusive(config.store, repo.root, store_locks.SYNC, "sync") as lock:
        if not lock.held:
            print(
                f"sync: another sync is running on this repository ({lock.holder}); nothing done",
                flush=True,
            )
            return EXIT_FAILED
        return _run(config, repo, tuning, progress_bar, lock)


def _watch_lock(lock: store_locks.Held, stop: StopFlag, lost: threading.Event) -> None:
    """Stop the run at its next safe point if the lock goes away under it."""
    while not stop.wait(LOCK_CHECK_INTERVAL):
        if not lock.still_held():
            log.error(
                "sync: the sync lock was lost (its database connection dropped): "
                "stopping at the next safe point, another sync may start"
            )
            lost.set()
            stop.set()
            return


def _run(
    config: Config,
    repo: Repo,
    tuning: SyncTuning,
    progress_bar: bool | None,
    lock: store_locks.Held,
) -> int:
    db = Database.open(config.store, "sync")
    stop = StopFlag()
    lost = threading.Event()
    watcher = threading.Thread(
        target=_watch_lock, args=(lock, stop, lost), name="sync-lock", daemon=True
    )
    watcher.start()
    started = time.time()
    index: IndexSyncResult | None = None
    cache: CacheResult | None = None
    failures: list[str] = []
    try:
        with stop_on_signals(stop):
            index = _run_index(config, repo, db, stop, tuning, progress_bar)
            print(index.summary(), flush=True)
            failures = _failures(index)
            # -- (2) cache management ------------------------------------------------------
            if not index.aborted and not stop.is_set():
                cache = _run_cache(config, repo, db, stop, progress_bar)
                print(cache.summary(), flush=True)
                failures.extend(_cache_failures(cache))
            if lost.is_set():
                failures.append("the sync lock was lost (database connection dropped); stopped")
    finally:
        stop.set()  # ends the watcher (the signal, if any, is remembered in stop.signum)
        # For the status page and /metrics (also a run that broke off: it ran).
        record_sync_run(db, started, index, cache, failures, stop.signum is not None)
        db.close()
    if stop.signum is not None:
        print(f"sync interrupted by {signal.Signals(stop.signum).name}", flush=True)
        return 128 + stop.signum
    if failures:
        print("sync failed: " + "; ".join(failures), flush=True)
        return EXIT_FAILED
    return EXIT_OK


def _run_index(
    config: Config,
    repo: Repo,
    db: Database,
    stop: threading.Event,
    tuning: SyncTuning,
    progress_bar: bool | None,
) -> IndexSyncResult:
    try:
        return asyncio.run(
            sync_index(config, repo, db, stop=stop, tuning=tuning, progress_bar=progress_bar)
        )
    except Exception as error:
        # Not a per-project problem (those are counted): the local store itself failed.
        log.exception("index sync failed")
        return IndexSyncResult(aborted=f"{type(error).__name__}: {error}")


def _run_cache(
    config: Config, repo: Repo, db: Database, stop: threading.Event, progress_bar: bool | None
) -> CacheResult:
    try:
        return asyncio.run(
            run_cache_management(
                config, db, repo, dry_run=False, stop=stop, progress_bar=progress_bar
            )
        )
    except Exception as error:
        # A local store failed (disk, database): the next run's inventory picks up from disk.
        log.exception("cache management failed")
        return CacheResult(failures=[f"aborted ({type(error).__name__}: {error})"])


def _cache_failures(cache: CacheResult) -> list[str]:
    if not cache.failures:
        return []
    shown = "; ".join(cache.failures[:5])
    listed = max(len(cache.failures), cache.failed)
    more = f" and {listed - 5} more" if listed > 5 else ""
    count = f"{cache.failed} file(s) failed: " if cache.failed else ""
    return [f"cache management: {count}{shown}{more}"]


def _failures(index: IndexSyncResult) -> list[str]:
    failures = []
    if index.aborted:
        failures.append(f"index sync aborted ({index.aborted})")
    if index.failed:
        names = sorted(index.failed)
        more = max(0, len(names) - 20) + index.not_attempted
        shown = ", ".join(names[:20]) + (f" and {more} more" if more > 0 else "")
        failures.append(f"{index.failed_count} project(s) could not be synced: {shown}")
    if index.disk_full:
        failures.append(
            f"the disk is full ({index.disk_full}): {index.not_attempted} project(s) were "
            "not attempted"
        )
    if index.root_failed:
        failures.append(f"the root index was not written ({index.root_failed})")
    return failures


def _dry_run(config: Config, tuning: SyncTuning) -> int:
    """List the upstream, compare, print the plan. Creates and changes nothing."""
    db = _existing(config.store)
    try:
        plan = asyncio.run(plan_sync(config, db, tuning))
    except UpstreamError as error:
        print(f"sync --dry-run: {listing_failed(config, error)}", flush=True)
        return EXIT_FAILED
    finally:
        if db is not None:
            db.close()
    print("dry run, nothing changed:", flush=True)
    print(format_plan(plan, config.sync.max_deletions), flush=True)
    print("\n".join(_cache_plan(config)), flush=True)
    return EXIT_FAILED if len(plan.removed) > config.sync.max_deletions else EXIT_OK


def _existing(store: StoreLocation) -> Database | None:
    """The store if it exists: a dry run creates nothing (a PostgreSQL database exists)."""
    if store.sqlite_path is not None and not store.sqlite_path.exists():
        return None
    return Database(store, "sync")


def _cache_plan(config: Config) -> list[str]:
    """What cache management would do now (from the votes and the tiers as they are)."""
    db = _existing(config.store)
    if db is None:
        return ["cache plan: no database yet (no votes): nothing to do"]
    try:
        result = asyncio.run(
            run_cache_management(config, db, Repo(config), dry_run=True, stop=StopFlag())
        )
    finally:
        db.close()
    return format_cache_plan(result)
