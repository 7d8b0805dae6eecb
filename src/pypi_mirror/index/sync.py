"""The index sync: upstream serials ─► plan ─► fetch JSON ─► render ─► atomic writes ─► root index.

Order of effects, chosen so that a run killed at any moment leaves a consistent mirror:
- a project's cached files that vanished upstream are deleted *before* its new JSON replaces the
  old one (the old JSON is the only record of which files belonged to it);
- its pages and JSON land (each atomically), and only then does its serial advance, committed at
  once: the next run refetches exactly the projects whose serial did not advance;
- the root index is regenerated last, from the serials table.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import aiohttp

from pypi_mirror.config import Config
from pypi_mirror.db import STORE_ERRORS, Database
from pypi_mirror.filters import Filters, filters_of
from pypi_mirror.index.render import (
    RenderError,
    SimpleExtras,
    index_files,
    parse_pypi_json,
)
from pypi_mirror.index.root import GLOBAL_SERIAL_KEY
from pypi_mirror.index.root_fresh import root_lock, write_root_recorded
from pypi_mirror.index.serials import UpstreamSerials, fetch_serials
from pypi_mirror.index.simple_json import SimpleJsonReader
from pypi_mirror.index.store import (
    delete_project_pages,
    load_index_files,
    quarantined_paths,
    save_project,
)
from pypi_mirror.names import metadata_path, normalize
from pypi_mirror.progress import Progress, format_duration
from pypi_mirror.repo import Repo, is_disk_full
from pypi_mirror.upstream import UpstreamError, UpstreamUrls, is_transient_status, make_session

log = logging.getLogger(__name__)

SIMPLE_JSON_LAG = 3600.0  # seconds the PEP 691 root index may be behind the upstream


@dataclass(frozen=True)
class SyncTuning:
    """Timing knobs that are not configuration (tests shorten them)."""

    backoff: float = 1.0  # first retry delay after an error; doubles each time
    max_backoff: float = 60.0
    stale_retries: int = 3  # extra tries when the answer is older than the listing
    stale_delay: float = 0.25  # first delay between them; doubles
    stop_poll: float = 0.1  # how often the stop flag is looked at while fetching
    local_workers: int | None = None  # processes applying projects; None: CPUs - 1 (≥ 4 CPUs)
    pool_threshold: int = 1000  # fewer projects to fetch than this: apply in-process


@dataclass
class Plan:
    """What a sync would do: names are normalised; values are the listed serials."""

    changed: dict[str, int]
    new: dict[str, int]
    removed: list[str]
    global_serial: int
    listed: int  # projects the upstream lists
    stored_max_serial: int  # highest serial we held before this run

    def fetch_order(self) -> Iterator[tuple[str, int]]:
        """Changed projects first (their pages are being served stale), then new ones."""
        for name in sorted(self.changed):
            yield name, self.changed[name]
        for name in sorted(self.new):
            yield name, self.new[name]

    @property
    def to_fetch(self) -> int:
        return len(self.changed) + len(self.new)


@dataclass
class IndexSyncResult:
    new: int = 0
    updated: int = 0
    removed: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # project -> why
    files_deleted: int = 0
    interrupted: bool = False
    aborted: str | None = None  # the whole run was refused (listing failed, deletion cap)
    disk_full: str | None = None  # why storing stopped early (ENOSPC, SQLITE_FULL)
    not_attempted: int = 0  # planned projects left alone after the disk filled up
    root_failed: str | None = None  # the root index could not be written
    seconds: float = 0.0
    root_seconds: float = 0.0

    @property
    def failed_count(self) -> int:
        """Projects not brought up to date: those that failed, and after a full disk those
        that were not even tried."""
        return len(self.failed) + self.not_attempted

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"index sync: {self.new} new, {self.updated} updated, {self.removed} removed, "
            f"{self.failed_count} failed, {self.skipped} skipped, "
            f"{self.files_deleted} cached files deleted, in {format_duration(self.seconds)}"
        ]
        if self.aborted:
            lines.append(f"index sync aborted: {self.aborted}")
        if self.disk_full:
            lines.append(
                f"index sync stopped: the disk is full ({self.disk_full}); "
                f"{self.not_attempted} of the failed projects were not attempted"
            )
        if self.root_failed:
            lines.append(f"index sync: the root index was not written ({self.root_failed})")
        if self.interrupted:
            lines.append("index sync interrupted: stopped at a project boundary")
        if self.failed:
            names = sorted(self.failed)
            shown = ", ".join(f"{name} ({self.failed[name]})" for name in names[:limit])
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            lines.append(f"failed projects: {shown}{more}")
        return "\n".join(lines)


# -- plan ----------------------------------------------------------------------------------


def make_plan(upstream: UpstreamSerials, stored: Iterable[tuple[str, int]]) -> Plan:
    """Compare the listing with what we hold, one pass over the stored serials.

    The listing's dict becomes the plan's ``new`` (a million entries: no copy)."""
    pending = upstream.projects
    listed = len(pending)
    changed: dict[str, int] = {}
    removed: list[str] = []
    stored_max = 0
    for name, serial in stored:
        stored_max = max(stored_max, serial)
        remote = pending.pop(name, None)
        if remote is None:
            removed.append(name)
        elif remote > serial:
            changed[name] = remote
    return Plan(changed, pending, removed, upstream.global_serial, listed, stored_max)


def format_plan(plan: Plan, max_deletions: int, limit: int = 10) -> str:
    def first(names: Iterable[str], count: int) -> str:
        head = list(itertools.islice(names, limit))
        if not head:
            return ""
        more = f", … ({count - len(head)} more)" if count > len(head) else ""
        return ": " + ", ".join(head) + more

    lines = [
        f"upstream lists {plan.listed} projects (global serial {plan.global_serial})",
        f"new: {len(plan.new)}{first(sorted(plan.new), len(plan.new))}",
        f"changed: {len(plan.changed)}{first(sorted(plan.changed), len(plan.changed))}",
        f"removed: {len(plan.removed)}{first(sorted(plan.removed), len(plan.removed))}",
    ]
    if len(plan.removed) > max_deletions:
        lines.append(deletion_cap_message(len(plan.removed), max_deletions))
    return "\n".join(lines)


def deletion_cap_message(count: int, cap: int) -> str:
    return (
        f"{count} projects would be removed, more than sync.max_deletions ({cap}); "
        "nothing was deleted. If the upstream really dropped them, raise sync.max_deletions "
        "for one run."
    )


# -- fetching ------------------------------------------------------------------------------


@dataclass
class _Answer:
    status: str  # "ok" | "stale" | "missing" | "failed"
    body: bytes = b""
    reason: str = ""
    retry: bool = True  # for "failed": False when the same request would get the same answer
    extras: SimpleExtras | None = None  # from the upstream's PEP 691 page, when read


def _header_serial(response: aiohttp.ClientResponse) -> int | None:
    value = response.headers.get("X-PyPI-Last-Serial", "")
    return int(value) if value.isdigit() else None


class _Fetcher:
    """GET /pypi/{name}/json with retries (errors, timeouts) and brief re-asks (stale, 404)."""

    def __init__(self, config: Config, session: aiohttp.ClientSession, tuning: SyncTuning) -> None:
        self.config = config
        self.urls = UpstreamUrls(config)
        self.session = session
        self.retries = config.sync.retry
        self.tuning = tuning

    def _backoff(self, attempt: int) -> float:
        return min(self.tuning.backoff * 2**attempt, self.tuning.max_backoff)

    async def fetch(self, name: str, listed: int, *, held: bool) -> _Answer:
        """``held``: we have the project, so a 404 (which removes it) is asked again first."""
        url = self.urls.project_json(name)
        errors = 0
        rechecks = 0
        while True:
            try:
                answer = await self._get(url, listed)
            except (aiohttp.ClientError, TimeoutError, RenderError) as error:
                reason = "timeout" if isinstance(error, TimeoutError) else str(error) or repr(error)
                answer = _Answer("failed", reason=reason)
            if answer.status == "failed":
                if errors >= self.retries or not answer.retry:
                    return answer
                log.debug("%s: %s; retrying", name, answer.reason)
                await asyncio.sleep(self._backoff(errors))
                errors += 1
                continue
            recheck = answer.status == "stale" or (answer.status == "missing" and held)
            if recheck and rechecks < self.tuning.stale_retries:
                # A CDN may lag behind the listing: a stale body, or a passing 404 that would
                # make us delete a project. (A new project's 404 is simply tried next run.)
                await asyncio.sleep(self.tuning.stale_delay * 2**rechecks)
                rechecks += 1
                continue
            if answer.status == "stale":
                answer.status = "ok"  # accepted: the body's own serial is what gets stored
            return answer

    async def _get(self, url: str, listed: int) -> _Answer:
        async with self.session.get(url, allow_redirects=False) as response:
            if response.status == 404:
                return _Answer("missing")
            if response.status != 200:
                status = response.status
                return _Answer("failed", reason=f"HTTP {status}", retry=is_transient_status(status))
            content_type = response.headers.get("Content-Type", "")
            if content_type and "json" not in content_type.lower():
                # An HTML error page or a login portal: asking again gets the same.
                return _Answer("failed", reason=f"not JSON: {content_type!r}", retry=False)
            body = await response.read()
            header = _header_serial(response)
        # PyPI sends the project's serial in a header; only without one is the body parsed here
        # (it is parsed again where it is rendered, so this is worth saving).
        serial = header if header is not None else parse_pypi_json(body)["last_serial"]
        return _Answer("stale" if serial < listed else "ok", body=body)


# -- applying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What applying one fetched project did (crosses process boundaries: plain data)."""

    kind: str  # "new" | "updated" | "removed" | "skipped" | "failed"
    reason: str = ""
    files_deleted: int = 0
    serial: int = 0
    disk_full: bool = False  # failed because the disk (or the database's) is full


def delete_cached(repo: Repo, db: Database, paths: Iterable[str]) -> int:
    """Delete files (and their PEP 658 metadata) from every tier, and their local_sizes rows."""
    targets = [p for path in paths for p in (path, metadata_path(path))]
    deleted = 0
    for path in targets:
        for tier in repo.tiers:
            if repo.tier_file(tier.index, path).is_file():
                repo.delete_file(tier.index, path)
                deleted += 1
    if targets:
        db.delete_local_files(targets)
    return deleted


def stored_paths(repo: Repo, name: str) -> list[str]:
    """File paths listed in our JSON copy of ``name`` (the record of what may be cached)."""
    try:
        files = load_index_files(repo, name)
    except RenderError as error:
        log.warning("%s: stored JSON is unreadable (%s); its files are unknown", name, error)
        return []
    return [f.path for f in files or ()]


def apply_project(
    repo: Repo, db: Database, name: str, body: bytes, extras: SimpleExtras | None = None
) -> Outcome:
    """Store one fetched ``/pypi/{name}/json`` body: delete the cached files that vanished from
    it (all of them when ``extras`` say it is quarantined), then write its pages and JSON and
    advance its serial (store.save_project)."""
    try:
        row = db.get_serial(name)
        old = stored_paths(repo, name)
        deleted = 0
        if row is not None or old:
            # A project we hold: check the answer against what we have before replacing it.
            doc = parse_pypi_json(body)
            shown = normalize(doc["info"]["name"])
            if shown != name:
                return Outcome("failed", f"upstream answered with project {shown!r}")
            if row is not None and doc["last_serial"] < row[0]:
                # Older than what we hold (a lagging CDN): keep ours, ask again next run.
                log.warning(
                    "%s: upstream answered serial %d, older than ours (%d); kept ours",
                    name,
                    doc["last_serial"],
                    row[0],
                )
                return Outcome("skipped", "older than ours")
            if old:
                # Before the new JSON replaces the old: the old one is the only record.
                current = {f.path for f in index_files(doc)}
                deleted = delete_cached(repo, db, [p for p in old if p not in current])
        if extras is not None and extras.quarantined:
            # PEP 792: none of its files may be offered, whichever tier holds them.
            deleted += delete_cached(repo, db, set(old) | set(quarantined_paths(body)))
        rendered = save_project(repo, db, body, on_demand=False, extras=extras)
        if rendered.name != name:
            # Only for a project new to us: the pages went to the project the body names.
            return Outcome("failed", f"upstream answered with project {rendered.name!r}")
        return Outcome("new" if row is None else "updated", "", deleted, rendered.serial)
    except (OSError, RenderError, *STORE_ERRORS) as error:
        # STORE_ERRORS: "database or disk is full" is this project's failure, counted like
        # any other, not the end of the run with every count lost.
        return Outcome("failed", f"cannot store: {error}", disk_full=is_disk_full(error))


def remove_project(repo: Repo, db: Database, name: str, listed_at: float) -> tuple[bool, int]:
    """Forget a project gone upstream: cached files first, then pages, JSON and serial.

    Returns (removed, cached files deleted)."""
    row = db.get_serial(name)
    if row is not None and row[1] > listed_at:
        # Fetched on demand after we listed: the upstream has it now.
        return False, 0
    deleted = delete_cached(repo, db, stored_paths(repo, name))
    delete_project_pages(repo, db, name)
    return True, deleted


# -- the run -------------------------------------------------------------------------------


async def list_upstream(
    config: Config,
    session: aiohttp.ClientSession,
    tuning: SyncTuning,
    progress_bar: bool | None = None,
) -> UpstreamSerials:
    """The listing, with ``sync.retry`` retries (and progress: at PyPI's size it takes a
    while)."""
    source = config.upstream.serials_source
    attempt = 0
    while True:
        try:
            with Progress("listing the upstream", 0, unit="projects", bar=progress_bar) as seen:
                listing = await fetch_serials(session, UpstreamUrls(config), source, seen.advance)
                seen.advance(listing.entries - seen.done)
                if listing.invalid_names:
                    log.warning(
                        "the upstream listed %d names that are not project names (ignored)",
                        listing.invalid_names,
                    )
                drop_denied(listing, filters_of(config.filters))
                return listing
        except UpstreamError as error:
            if attempt >= config.sync.retry or not error.transient:
                raise
            delay = min(tuning.backoff * 2**attempt, tuning.max_backoff)
            log.warning("listing projects failed (%s); retrying in %.1fs", error, delay)
            await asyncio.sleep(delay)
            attempt += 1


def drop_denied(listing: UpstreamSerials, filters: Filters) -> None:
    """filters.deny_projects: a denied project is as if unlisted, so a held one is removed
    (pages, cached files) like any project the upstream dropped, and the root omits it."""
    if filters.deny:
        denied = [name for name in listing.projects if filters.denies(name)]
        for name in denied:
            del listing.projects[name]
        if denied:
            log.info("filters.deny_projects: %d listed projects left out", len(denied))


def listing_failed(config: Config, error: UpstreamError) -> str:
    """Why the run cannot start, with the way around an upstream that refuses XML-RPC."""
    message = f"cannot list the upstream's projects: {error}"
    if config.upstream.serials_source == "xmlrpc" and "serials_source" not in message:
        message += (
            " (an upstream without XML-RPC can be listed from its PEP 691 JSON root"
            " index: upstream.serials_source: simple-json)"
        )
    return message


async def plan_sync(config: Config, db: Database | None, tuning: SyncTuning = SyncTuning()) -> Plan:
    """List the upstream and compare with ``db`` (None: an empty mirror). Changes nothing."""
    async with make_session(config) as session:
        upstream = await list_upstream(config, session, tuning)
    return make_plan(upstream, db.iter_serials_sorted() if db is not None else ())


async def sync_index(
    config: Config,
    repo: Repo,
    db: Database,
    *,
    stop: threading.Event | None = None,
    tuning: SyncTuning = SyncTuning(),
    progress_bar: bool | None = None,
) -> IndexSyncResult:
    """Bring the local index up to the upstream's. ``stop`` ends it at a project boundary."""
    result = IndexSyncResult()
    clock = time.monotonic()
    try:
        await _sync_index(config, repo, db, result, stop or threading.Event(), tuning, progress_bar)
    except Exception as error:
        # The local store failed as a whole (one project's failure is counted, not raised);
        # what was done until then is still reported.
        log.exception("index sync failed")
        result.aborted = f"{type(error).__name__}: {error}"
    result.seconds = time.monotonic() - clock
    return result


async def _sync_index(
    config: Config,
    repo: Repo,
    db: Database,
    result: IndexSyncResult,
    stop: threading.Event,
    tuning: SyncTuning,
    progress_bar: bool | None,
) -> None:
    clock = time.monotonic()
    repo.pages_staging_dir.mkdir(parents=True, exist_ok=True)
    leftovers = repo.clear_stale_staging()
    if leftovers:
        log.info("removed %d temporary documents left by an interrupted run", leftovers)
    # A project fetched (on demand, or by us) after this moment is not removed for being
    # absent from the listing. The PEP 691 root index may lag by half an hour (CDN), so with
    # it the moment moves back by an hour.
    listed_at = time.time()
    if config.upstream.serials_source == "simple-json":
        listed_at -= SIMPLE_JSON_LAG
    concurrency = config.sync.concurrent_downloads
    async with make_session(config, limit=concurrency) as session:
        try:
            upstream = await list_upstream(config, session, tuning, progress_bar)
        except UpstreamError as error:
            result.aborted = listing_failed(config, error)
            return
        listed_in = time.monotonic() - clock
        plan = make_plan(upstream, db.iter_serials_sorted())
        del upstream
        log.info(
            "upstream lists %d projects (listed in %s, planned in %s): "
            "%d new, %d changed, %d removed",
            plan.listed,
            format_duration(listed_in),
            format_duration(time.monotonic() - clock - listed_in),
            len(plan.new),
            len(plan.changed),
            len(plan.removed),
        )
        if len(plan.removed) > config.sync.max_deletions:
            result.aborted = deletion_cap_message(len(plan.removed), config.sync.max_deletions)
            return
        cpu_before = _cpu_seconds()
        local = _Local.start(config, repo, db, tuning, plan.to_fetch)
        try:
            total = len(plan.removed) + plan.to_fetch
            with Progress("index sync", total, unit="projects", bar=progress_bar) as progress:
                for name in plan.removed:
                    if stop.is_set():
                        break
                    removed, deleted = remove_project(repo, db, name, listed_at)
                    result.removed += removed
                    result.files_deleted += deleted
                    progress.advance()
                plan.removed = []
                if not stop.is_set():
                    fetcher = _Fetcher(config, session, tuning)
                    run = _FetchRun(plan, fetcher, local, result, listed_at)
                    await run.run(concurrency, stop, progress, tuning)
        finally:
            local.close()
        cpu = _cpu_seconds() - cpu_before
        done = progress.done
        log.info(
            "projects: %s of CPU for %d (%s per CPU-second)",
            format_duration(cpu),
            done,
            f"{done / cpu:,.0f}" if cpu > 0 else "-",
        )
    result.interrupted = stop.is_set()
    if not result.interrupted:
        root_clock = time.monotonic()
        written_max = max(local.serials, default=0)
        complete = not result.failed and not result.not_attempted
        global_serial = _root_serial(db, plan, written_max, complete=complete)
        try:
            # Waits for a `serve` worker's rewrite (seconds), then writes over it.
            with root_lock(repo, blocking=True):
                write_root_recorded(repo, db, global_serial)
        except (OSError, *STORE_ERRORS) as error:
            # The projects stored stay stored (their pages are served); the root index is
            # written again by the next run.
            log.error("root index not written: %s", error)
            result.root_failed = f"{type(error).__name__}: {error}"
            return
        result.root_seconds = time.monotonic() - root_clock
        log.info("root index written in %s", format_duration(result.root_seconds))


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the pool's workers, once closed)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# Per-process state of the pool's workers (set by _worker_init).
_worker_store: tuple[Repo, Database] | None = None


def _worker_init(config: Config) -> None:
    # Signals are the parent's business: it stops handing out work, we finish the project.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    global _worker_store
    _worker_store = (Repo(config), Database.open(config.store, "sync"))


def _worker_apply(name: str, body: bytes, extras: SimpleExtras | None) -> Outcome:
    assert _worker_store is not None
    repo, db = _worker_store
    return apply_project(repo, db, name, body, extras)


def _worker_ready() -> bool:
    return _worker_store is not None


class _Local:
    """Where fetched projects are applied: in this process, or — for big runs on a machine with
    several cores — in a pool of processes, since rendering is CPU work that holds the GIL.

    Each worker has its own database connection; serials commit per project either way."""

    def __init__(self, repo: Repo, db: Database, pool: ProcessPoolExecutor | None) -> None:
        self.repo = repo
        self.db = db
        self.pool = pool
        self.serials: list[int] = []

    @classmethod
    def start(
        cls, config: Config, repo: Repo, db: Database, tuning: SyncTuning, to_fetch: int
    ) -> _Local:
        workers = tuning.local_workers
        if workers is None:
            # The main process needs a core of its own for the HTTP side; measured on two
            # cores, a pool is slower than applying in-process (the IPC costs what it saves).
            cpus = os.cpu_count() or 1
            workers = cpus - 1 if cpus >= 4 else 0
        if workers < 1 or to_fetch < tuning.pool_threshold:
            return cls(repo, db, None)
        # fork: the workers need nothing re-imported, and `python -m pypi_mirror` must not
        # run again in them (what spawn and forkserver would do with the main module). Frozen
        # objects are skipped by the children's garbage collector, so the plan's big dicts
        # stay shared instead of being copied page by page.
        gc.freeze()
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(config,),
        )
        # Start them all now, before the progress thread exists.
        for ready in [pool.submit(_worker_ready) for _ in range(workers)]:
            ready.result()
        gc.unfreeze()
        log.info("applying projects in %d worker processes", workers)
        return cls(repo, db, pool)

    async def apply(self, name: str, body: bytes, extras: SimpleExtras | None) -> Outcome:
        if self.pool is None:
            outcome = apply_project(self.repo, self.db, name, body, extras)
        else:
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(self.pool, _worker_apply, name, body, extras)
        if outcome.serial:
            self.serials.append(outcome.serial)
            if len(self.serials) > 1024:
                self.serials[:] = [max(self.serials)]
        return outcome

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _FetchRun:
    """``concurrency`` tasks taking projects from one queue: fetch, then apply."""

    def __init__(
        self,
        plan: Plan,
        fetcher: _Fetcher,
        local: _Local,
        result: IndexSyncResult,
        listed_at: float,
    ) -> None:
        self.order = plan.fetch_order()
        self.new = plan.new
        self.fetcher = fetcher
        self.simple = SimpleJsonReader(fetcher.config)
        self.local = local
        self.result = result
        self.listed_at = listed_at  # wall clock when the upstream was listed
        self.fetching: set[asyncio.Task[None]] = set()
        self.planned = plan.to_fetch
        self.recorded = 0

    async def worker(self, stop: threading.Event, progress: Progress) -> None:
        me = asyncio.current_task()
        assert me is not None
        # One shared iterator: next() is atomic between awaits.
        for name, listed in self.order:
            if stop.is_set() or self.result.disk_full:
                return
            self.fetching.add(me)
            try:
                answer = await self.fetcher.fetch(name, listed, held=name not in self.new)
                if answer.status == "ok":
                    answer.extras = await self.simple.fetch(self.fetcher.session, name)
            finally:
                self.fetching.discard(me)
            # Applying is never cancelled: a project is stored whole, then the stop is seen.
            self.record(name, answer, await self.outcome(name, answer))
            progress.advance()

    async def outcome(self, name: str, answer: _Answer) -> Outcome:
        if answer.status == "ok":
            return await self.local.apply(name, answer.body, answer.extras)
        if answer.status == "missing":
            # Listed but 404: quarantined upstream (PEP 792). Not an error: a project we hold
            # goes; one we never had is skipped and asked for again next run.
            if name not in self.new:
                local = self.local
                removed, deleted = remove_project(local.repo, local.db, name, self.listed_at)
                if removed:
                    return Outcome("removed", files_deleted=deleted)
            return Outcome("skipped", "not found upstream")
        return Outcome("failed", answer.reason)

    def record(self, name: str, answer: _Answer, outcome: Outcome) -> None:
        result = self.result
        self.recorded += 1
        result.files_deleted += outcome.files_deleted
        if outcome.kind == "new":
            result.new += 1
        elif outcome.kind == "updated":
            result.updated += 1
        elif outcome.kind == "removed":
            result.removed += 1
        elif outcome.kind == "skipped":
            result.skipped += 1
        else:
            result.failed[name] = outcome.reason
            log.warning("%s: %s", name, outcome.reason)
        if outcome.disk_full and not result.disk_full:
            # Every further project would be fetched only to fail the same way.
            result.disk_full = outcome.reason.removeprefix("cannot store: ")
            log.error("the disk is full: no further projects are fetched this run")

    async def run(
        self, concurrency: int, stop: threading.Event, progress: Progress, tuning: SyncTuning
    ) -> None:
        workers = [asyncio.create_task(self.worker(stop, progress)) for _ in range(concurrency)]
        running = set(workers)
        try:
            while running:
                done, running = await asyncio.wait(running, timeout=tuning.stop_poll)
                if any(not t.cancelled() and t.exception() is not None for t in done):
                    break
                if stop.is_set():
                    # In-flight fetches hold nothing written: drop them. Workers applying a
                    # project finish it and then see the stop.
                    for task in list(self.fetching):
                        task.cancel()
        finally:
            # Only after a crash (or if we are cancelled ourselves) is anything left running.
            for task in running:
                task.cancel()
            outcomes = await asyncio.gather(*workers, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        if self.result.disk_full:
            self.result.not_attempted = self.planned - self.recorded


def _root_serial(db: Database, plan: Plan, written_max: int, *, complete: bool) -> int:
    """The global serial the root index claims: the upstream's after a complete run; after a
    partial one the last complete run's (or the highest serial held, if there was none)."""
    if complete:
        db.set_setting(GLOBAL_SERIAL_KEY, str(plan.global_serial))
        return plan.global_serial
    stored = db.get_setting(GLOBAL_SERIAL_KEY)
    if stored is not None and stored.isdigit():
        return int(stored)
    return max(plan.stored_max_serial, written_max)


__all__ = [
    "IndexSyncResult",
    "Plan",
    "SyncTuning",
    "deletion_cap_message",
    "format_plan",
    "listing_failed",
    "make_plan",
    "plan_sync",
    "sync_index",
]
