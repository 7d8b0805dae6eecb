"""Cache management, phases A–E of SPEC.md (the second half of ``pypi-mirror sync``).

A inventory   walk every tier; ``local_sizes`` is the cache of what is there, so only names
              the table does not know are stat'ed; temporary files of crashed runs go.
B sizes       files with enough votes from distinct prefixes; sizes from the disk, from
              ``remote_sizes``, from the index we hold (``json/{name}``), else HEAD upstream.
C score       SPEC's formula, ranked (cache/plan.py).
D assign      first fit into the hottest tier with room; executed as deletions, moves (each
              once its target has room), downloads (verified, streamed to a temporary file).
E cleanup     old votes, old remote sizes, rows of files no longer on disk, orphan paths.

The database follows the disk, never the other way round: every change is made on disk first
and recorded after, so an interrupted run (signal or ``kill -9``) leaves at worst rows that
the next run's inventory corrects.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import re
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion

from pypi_mirror.cache import download as downloader
from pypi_mirror.cache.download import Digest, StopSignal
from pypi_mirror.cache.plan import Action, Entry, Plan, Step, make_plan, rank
from pypi_mirror.config import Config
from pypi_mirror.db import Database, LocalFile
from pypi_mirror.index.render import IndexFile, RenderError
from pypi_mirror.index.store import load_index_files
from pypi_mirror.names import (
    METADATA_SUFFIX,
    filename_of,
    is_normalized,
    is_valid_file_path,
    normalize,
)
from pypi_mirror.progress import Progress, format_duration
from pypi_mirror.repo import Repo, is_temp_name
from pypi_mirror.upstream import UpstreamUrls, make_session

log = logging.getLogger(__name__)

PHASES = ("A", "B", "C", "D", "E")
HEAD_CONCURRENCY = 16
# Sizes and hashes are those of the bytes as stored: no content coding on the way.
IDENTITY = {"Accept-Encoding": "identity"}
RETRY_BACKOFF = 0.5
# Database writes of phases A and D are grouped: one short transaction per batch.
DB_BATCH = 1000
LOCK_FILENAME = ".cache.lock"
INVALID_PATHS_LOGGED = 10
INDEX_PROJECTS_KEPT = 64
# Threads reading tier folders and stat'ing new files: on a cold cache each read is a disk
# wait, and the disk serves many at once (on a warm cache the extra threads cost nothing).
SCAN_WORKERS = 16
STAT_CHUNK = 1000


# -- results ---------------------------------------------------------------------------------


@dataclass
class TierState:
    index: int
    path: Path
    limit: int
    files: int = 0
    bytes: int = 0


@dataclass
class CacheResult:
    """What cache management did (or, in a dry run, would do)."""

    dry_run: bool = False
    tiers: list[TierState] = field(default_factory=list)
    plan: Plan | None = field(default=None, repr=False)
    candidates: int = 0
    votes_in_window: int = 0
    votes_local: int = 0
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    moved_files: int = 0
    moved_bytes: int = 0
    deleted_files: int = 0
    deleted_bytes: int = 0
    gone: int = 0  # 404 upstream: not an error, the file no longer exists
    skipped: int = 0  # not done this run: no room after an earlier step failed, no hash known
    download_errors: int = 0
    head_requests: int = 0
    stat_calls: int = 0
    temp_removed: int = 0
    invalid_paths: int = 0
    votes_dropped: int = 0
    remote_sizes_dropped: int = 0
    local_rows_dropped: int = 0
    files_dropped: int = 0
    stopped: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        """Share of the window's votes whose file is local now."""
        return self.votes_local / self.votes_in_window if self.votes_in_window else 0.0

    def summary(self) -> str:
        return "\n".join(format_summary(self))


def format_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_summary(result: CacheResult) -> list[str]:
    lines = [
        f"cache: {result.candidates:,} candidate files from {result.votes_in_window:,} votes in "
        f"the window; hit rate {result.hit_rate:.1%} (votes whose file is local)",
        f"cache: downloaded {result.downloaded_files:,} files "
        f"({format_size(result.downloaded_bytes)}), moved {result.moved_files:,} "
        f"({format_size(result.moved_bytes)}), deleted {result.deleted_files:,} "
        f"({format_size(result.deleted_bytes)}); {result.gone:,} gone upstream, "
        f"{result.download_errors:,} download errors, {result.skipped:,} skipped",
    ]
    for tier in result.tiers:
        share = f" ({tier.bytes / tier.limit:.0%})" if tier.limit else ""
        lines.append(
            f"cache tier {tier.index} {tier.path}: {tier.files:,} files, "
            f"{format_size(tier.bytes)} of {format_size(tier.limit)}{share}"
        )
    if result.temp_removed or result.invalid_paths:
        lines.append(
            f"cache: {result.temp_removed:,} leftover temporary files removed, "
            f"{result.invalid_paths:,} unexpected files ignored"
        )
    if result.phase_seconds:
        timings = ", ".join(
            f"{phase} {format_duration(seconds)}" for phase, seconds in result.phase_seconds.items()
        )
        lines.append(f"cache: phases {timings}")
    lines.extend(f"cache: note: {note}" for note in result.notes)
    if result.stopped:
        lines.append("cache: stopped before the end (signal)")
    return lines


def format_plan(result: CacheResult) -> list[str]:
    """The dry run's plan, per tier."""
    lines = [
        f"cache plan: {result.candidates:,} candidate files from {result.votes_in_window:,} "
        f"votes in the window"
    ]
    if result.plan is None:
        return [*lines, "cache plan: nothing to do", *result.notes]
    for state, change in zip(result.tiers, result.plan.tiers, strict=True):
        lines.append(
            f"tier {state.index} {state.path} (limit {format_size(change.limit)}): "
            f"{change.files_before:,} files, {format_size(change.bytes_before)} now -> "
            f"{change.files_after:,} files, {format_size(change.bytes_after)} after"
        )
        for label, files, size in (
            ("download", change.download_files, change.download_bytes),
            ("move in", change.move_in_files, change.move_in_bytes),
            ("move out", change.move_out_files, change.move_out_bytes),
            ("delete", change.delete_files, change.delete_bytes),
        ):
            lines.append(f"  {label:<9} {files:>10,} files {format_size(size):>12}")
    if result.plan.cycle_breaks:
        lines.append(
            f"cache plan: {result.plan.cycle_breaks:,} swaps between full tiers are done by "
            "deleting and downloading again"
        )
    lines.append(
        f"cache plan: cleanup would drop {result.votes_dropped:,} old votes and "
        f"{result.remote_sizes_dropped:,} old remote sizes"
    )
    lines.extend(f"cache plan: note: {note}" for note in result.notes)
    return lines


# -- the index we hold -----------------------------------------------------------------------

_EXTENSIONS = re.compile(r"\.(tar\.gz|tar\.bz2|tar\.xz|tar\.z|tgz|zip|egg|exe|msi|rpm|dmg|whl)$")


def project_names(filename: str) -> list[str]:
    """The projects a file may belong to, most likely first (normalised names)."""
    base = filename.removesuffix(METADATA_SUFFIX)
    names: list[str] = []
    try:
        if base.endswith(".whl"):
            names.append(parse_wheel_filename(base)[0])
        else:
            names.append(parse_sdist_filename(base)[0])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        pass
    # Odd names (eggs, installers, old sdists): the name is the parts before the first
    # part that starts with a digit; then every shorter prefix, just in case.
    parts = _EXTENSIONS.sub("", base, count=1).split("-")
    cut = next((i for i, part in enumerate(parts) if i and part[:1].isdigit()), len(parts))
    guesses = ["-".join(parts[:cut])] + ["-".join(parts[:i]) for i in range(1, len(parts))]
    for guess in guesses:
        name = normalize(guess) if guess else ""
        if name and is_normalized(name) and name not in names:
            names.append(name)
    return names


class IndexLookup:
    """Entries of the index we hold (``json/{name}``) for file paths, one project load each.

    Callers hand over many paths at once; they are grouped by project, so a project's JSON is
    read and parsed once per call, and a small LRU keeps the last few for the next call.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._projects: OrderedDict[str, dict[str, IndexFile]] = OrderedDict()

    def _project(self, name: str) -> dict[str, IndexFile]:
        files = self._projects.get(name)
        if files is not None:
            self._projects.move_to_end(name)
            return files
        try:
            listed = load_index_files(self.repo, name) or []
        except (RenderError, OSError) as error:
            log.warning("%s: stored JSON is unreadable (%s)", name, error)
            listed = []
        files = {f.path: f for f in listed}
        self._projects[name] = files
        if len(self._projects) > INDEX_PROJECTS_KEPT:
            self._projects.popitem(last=False)
        return files

    def find(self, paths: Iterable[str]) -> dict[str, IndexFile]:
        """The index entry of each distribution file path the index lists."""
        by_project: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
        for path in paths:
            names = project_names(filename_of(path))
            if names:
                by_project[names[0]].append((path, names))
        found: dict[str, IndexFile] = {}
        for name in sorted(by_project):
            files = self._project(name)
            for path, names in by_project[name]:
                entry = files.get(path)
                for other in names[1:]:
                    if entry is not None:
                        break
                    entry = self._project(other).get(path)
                if entry is not None:
                    found[path] = entry
        return found


def digest_for(path: str, entry: IndexFile | None) -> Digest | None:
    """What a file must hash to: the index's sha256 (or, for a ``.metadata`` file, the
    advertised hash of the metadata); else, for a distribution file, the blake2b-256 that
    PyPI's own path is made of. None when nothing can vouch for the bytes."""
    if path.endswith(METADATA_SUFFIX):
        if entry is not None and entry.metadata_sha256:
            return Digest("sha256", entry.metadata_sha256)
        return None
    if entry is not None and entry.sha256:
        return Digest("sha256", entry.sha256)
    return Digest("blake2b_256", path[0:2] + path[3:5] + path[6:66])


def distribution_path(path: str) -> str:
    return path.removesuffix(METADATA_SUFFIX)


# -- phase A: inventory ----------------------------------------------------------------------


@dataclass
class Inventory:
    local: dict[str, tuple[int, int]]  # path -> (size, tier)
    stale: list[str]  # rows of local_sizes whose file is on no tier any more
    usage: list[int]  # bytes per tier
    counts: list[int]  # files per tier


def take_inventory(
    repo: Repo, db: Database, result: CacheResult, *, dry_run: bool, stop: StopSignal
) -> Inventory:
    known = db.local_files_map()
    local: dict[str, tuple[int, int]] = {}
    new: dict[str, int] = {}  # path -> tier: files the table does not know (yet)
    for tier in repo.tiers:
        base = f"{tier.path}{os.sep}"
        for count, path in enumerate(repo.scan_tier(tier.index, workers=SCAN_WORKERS)):
            if count % 10_000 == 0 and stop.is_set():
                result.stopped = True
                break
            held = known.get(path)
            if held is not None and held[1] == tier.index and path not in local:
                local[path] = held  # the usual case: known, same tier, no stat
                continue
            if is_temp_name(filename_of(path)):
                # Left by a crashed run: never complete, never visible, never counted.
                if not dry_run:
                    _unlink(base + path)
                result.temp_removed += 1
                continue
            if not is_valid_file_path(path):
                result.invalid_paths += 1
                if result.invalid_paths <= INVALID_PATHS_LOGGED:
                    log.warning("tier %d: ignoring %s (not a PyPI file path)", tier.index, path)
                continue
            if path in local or path in new:
                # Also in a hotter tier: the source of a cross-filesystem move that was cut
                # short after its copy was complete. One copy is enough; keep the hotter one.
                log.info("tier %d: removing a second copy of %s", tier.index, path)
                if not dry_run:
                    _unlink(base + path)
                continue
            new[path] = tier.index
        if result.stopped:
            break
    new_rows: list[LocalFile] = []
    paths = list(new)
    full_paths = [f"{repo.tiers[new[path]].path}{os.sep}{path}" for path in paths]
    for path, size in zip(paths, _sizes(full_paths), strict=True):
        if size is not None:
            local[path] = (size, new[path])
            new_rows.append(LocalFile(path, size, new[path]))
    result.stat_calls += len(paths)
    usage = [0] * len(repo.tiers)
    counts = [0] * len(repo.tiers)
    for size, tier_index in local.values():
        usage[tier_index] += size
        counts[tier_index] += 1
    stale = [] if result.stopped else [path for path in known if path not in local]
    if not dry_run:
        for batch in _batches(new_rows, 10 * DB_BATCH):
            db.set_local_files(batch)
    if result.invalid_paths > INVALID_PATHS_LOGGED:
        log.warning("%d files in the tiers are not PyPI file paths", result.invalid_paths)
    return Inventory(local, stale, usage, counts)


def _sizes(full_paths: list[str]) -> list[int | None]:
    """os.stat sizes (None: gone since the walk), from several threads: a cold inode cache
    makes each stat a disk read, and those overlap."""

    def chunk(start: int) -> list[int | None]:
        sizes: list[int | None] = []
        for full in full_paths[start : start + STAT_CHUNK]:
            try:
                sizes.append(os.stat(full).st_size)
            except FileNotFoundError:
                sizes.append(None)
        return sizes

    starts = range(0, len(full_paths), STAT_CHUNK)
    if len(starts) <= 1:
        return [size for start in starts for size in chunk(start)]
    with ThreadPoolExecutor(SCAN_WORKERS, thread_name_prefix="stat") as pool:
        return [size for sizes in pool.map(chunk, starts) for size in sizes]


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _batches(items: list[LocalFile], size: int) -> Iterator[list[LocalFile]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- phase B: candidates and their sizes -----------------------------------------------------


@dataclass
class Candidates:
    entries: list[Entry]
    others: list[Entry]  # local files that are not candidates: they go
    votes_of_others: dict[str, int]
    digests: dict[str, Digest]  # learned on the way, for the downloads


async def find_candidates(
    config: Config,
    db: Database,
    inventory: Inventory,
    result: CacheResult,
    session_factory: Callable[[], aiohttp.ClientSession],
    lookup: IndexLookup,
    *,
    now: float,
    dry_run: bool,
    stop: StopSignal,
    progress_bar: bool | None,
) -> Candidates:
    cache = config.cache
    fresh_after = now - cache.size_db_ttl
    local = inventory.local
    entries: list[Entry] = []
    votes_of_others: dict[str, int] = {}
    unknown: list[tuple[str, int]] = []
    # One aggregate query over the covering index: votes and distinct prefixes per file.
    for path, votes, prefixes, remote_size, checked_at in db.vote_totals(now - cache.vote_window):
        result.votes_in_window += votes
        held = local.get(path)
        if prefixes < cache.min_vote_count:
            if held is not None:
                votes_of_others[path] = votes
            continue
        if held is not None:
            if held[0] > cache.filesize_limit:
                votes_of_others[path] = votes
            else:
                entries.append(Entry(path, held[0], votes, held[1]))
            continue
        if not is_valid_file_path(path):
            continue
        if checked_at is not None and checked_at >= fresh_after:
            if remote_size is not None and remote_size <= cache.filesize_limit:
                entries.append(Entry(path, remote_size, votes, None))
            continue
        unknown.append((path, votes))

    digests: dict[str, Digest] = {}
    if unknown:
        learned = await _learn_sizes(
            config, unknown, digests, result, session_factory, lookup, stop, progress_bar
        )
        if not dry_run:
            db.set_remote_sizes(learned.items(), now=now)
        for path, votes in unknown:
            size = learned.get(path, -1)
            if size is not None and 0 <= size <= cache.filesize_limit:
                entries.append(Entry(path, size, votes, None))
    candidate_paths = {entry.path for entry in entries}
    others = [
        Entry(path, size, votes_of_others.get(path, 0), tier)
        for path, (size, tier) in local.items()
        if path not in candidate_paths
    ]
    result.candidates = len(entries)
    return Candidates(entries, others, votes_of_others, digests)


async def _learn_sizes(
    config: Config,
    unknown: list[tuple[str, int]],
    digests: dict[str, Digest],
    result: CacheResult,
    session_factory: Callable[[], aiohttp.ClientSession],
    lookup: IndexLookup,
    stop: StopSignal,
    progress_bar: bool | None,
) -> dict[str, int | None]:
    """Sizes of voted files that are not local: the index first, HEAD for the rest.

    Returns path -> size, or None for a file the upstream says is gone (404); a file whose
    size could not be learned (network trouble) is left out, to be asked again next run, and
    so is a ``.metadata`` file whose hash the index does not give (it could not be checked).
    """
    paths = [path for path, _votes in unknown]
    entries = lookup.find({distribution_path(path) for path in paths})
    learned: dict[str, int | None] = {}
    to_ask: list[str] = []
    for path in paths:
        entry = entries.get(distribution_path(path))
        digest = digest_for(path, entry)
        if digest is None:
            continue
        digests[path] = digest
        if entry is not None and not path.endswith(METADATA_SUFFIX):
            learned[path] = entry.size
        else:
            to_ask.append(path)
    if to_ask and not stop.is_set():
        learned.update(
            await _head_sizes(config, to_ask, result, session_factory, stop, progress_bar)
        )
    return learned


async def _head_sizes(
    config: Config,
    paths: list[str],
    result: CacheResult,
    session_factory: Callable[[], aiohttp.ClientSession],
    stop: StopSignal,
    progress_bar: bool | None,
) -> dict[str, int | None]:
    urls = UpstreamUrls(config)
    retries = config.sync.retry
    sizes: dict[str, int | None] = {}
    session = session_factory()
    semaphore = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def one(path: str) -> None:
        async with semaphore:
            try:
                known, size = await _head_size(session, urls.file(path), retries, result, stop)
            finally:
                progress.advance()
        if known:
            sizes[path] = size

    with Progress(
        "cache sizes (HEAD)", total=len(paths), unit="files", bar=progress_bar
    ) as progress:
        await asyncio.gather(*(one(path) for path in paths))
    return sizes


async def _head_size(
    session: aiohttp.ClientSession,
    url: str,
    retries: int,
    result: CacheResult,
    stop: StopSignal,
) -> tuple[bool, int | None]:
    """(known, Content-Length of ``url``): size None when it is gone (404); not known when
    the upstream could not say (errors after the retries, or a stop)."""
    reason = "stopped"
    for attempt in range(retries + 1):
        if stop.is_set():
            return False, None
        result.head_requests += 1
        try:
            async with session.head(url, headers=IDENTITY, allow_redirects=True) as response:
                if response.status in downloader.GONE_STATUSES:
                    return True, None
                if response.status == 200 and response.content_length is not None:
                    return True, response.content_length
                reason = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
        if attempt < retries:
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
    log.warning("HEAD %s: %s; size unknown this run", url, reason)
    return False, None


# -- phase D: execution ----------------------------------------------------------------------


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
            self.result.failures.append(f"delete {step.path}: {error}")
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
            self.result.failures.append(f"move {step.path}: {error}")
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
                    backoff=RETRY_BACKOFF,
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
                    if len(self.result.failures) < 20:
                        self.result.failures.append(f"download {step.path}: {outcome.reason}")
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


# -- phase E: cleanup ------------------------------------------------------------------------


def cleanup(
    config: Config, db: Database, stale: list[str], result: CacheResult, *, now: float
) -> None:
    """``stale``: rows of local_sizes whose file is on no tier (and was not placed since)."""
    result.votes_dropped = db.delete_votes_before(now - config.cache.vote_window)
    result.remote_sizes_dropped = db.delete_remote_sizes_before(now - config.cache.size_db_ttl)
    if stale:
        db.delete_local_files(stale)
    result.local_rows_dropped = len(stale)
    result.files_dropped = db.delete_unreferenced_files()


# -- the whole run ---------------------------------------------------------------------------


@contextmanager
def _exclusive(repo: Repo) -> Iterator[bool]:
    """One cache manager at a time per repository (overlapping timer runs)."""
    repo.root.mkdir(parents=True, exist_ok=True)
    with open(repo.root / LOCK_FILENAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def run_cache_management(
    config: Config,
    db: Database,
    repo: Repo,
    *,
    dry_run: bool,
    stop: StopSignal,
    now: float | None = None,
    session: aiohttp.ClientSession | None = None,
    progress_bar: bool | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> CacheResult:
    """Phases A–E. ``now`` fixes the clock (benchmarks); ``on_phase`` is told when each
    phase starts (and ``""`` at the end), for measurements."""
    result = CacheResult(
        dry_run=dry_run,
        tiers=[TierState(t.index, t.path, t.size_limit) for t in repo.tiers],
    )
    with _exclusive(repo) if not dry_run else _nothing() as allowed:
        if not allowed:
            result.failures.append("another sync is managing the cache; skipped")
            return result
        owned: list[aiohttp.ClientSession] = []

        def session_factory() -> aiohttp.ClientSession:
            if session is not None:
                return session
            if not owned:
                owned.append(make_session(config))
            return owned[0]

        try:
            await _run(
                config,
                db,
                repo,
                result,
                session_factory,
                dry_run=dry_run,
                stop=stop,
                now=time.time() if now is None else now,
                progress_bar=progress_bar,
                on_phase=on_phase or (lambda _phase: None),
            )
        finally:
            for own in owned:
                await own.close()
    return result


@contextmanager
def _nothing() -> Iterator[bool]:
    yield True


async def _run(
    config: Config,
    db: Database,
    repo: Repo,
    result: CacheResult,
    session_factory: Callable[[], aiohttp.ClientSession],
    *,
    dry_run: bool,
    stop: StopSignal,
    now: float,
    progress_bar: bool | None,
    on_phase: Callable[[str], None],
) -> None:
    clock = time.perf_counter()

    def enter(phase: str) -> None:
        nonlocal clock
        moment = time.perf_counter()
        if result.phase_seconds:
            last = next(reversed(result.phase_seconds))
            result.phase_seconds[last] = moment - clock
        clock = moment
        if phase:
            result.phase_seconds[phase] = 0.0
        on_phase(phase)

    # Phases A-D build millions of small long-lived objects (paths, rows, entries) that form
    # no cycles; the cyclic collector would walk them again and again (measured: about half
    # the time of a run). It is paused while they are built, and they are kept out of its way
    # (frozen) while the execution, which does make cyclic garbage, runs with it enabled.
    collecting = gc.isenabled()
    gc.disable()
    try:
        enter("A")
        inventory = take_inventory(repo, db, result, dry_run=dry_run, stop=stop)
        _tier_states(result, inventory.usage, inventory.counts)
        if result.stopped:
            return
        lookup = IndexLookup(repo)
        enter("B")
        candidates = await find_candidates(
            config,
            db,
            inventory,
            result,
            session_factory,
            lookup,
            now=now,
            dry_run=dry_run,
            stop=stop,
            progress_bar=progress_bar,
        )
        if stop.is_set():
            result.stopped = True
            return
        enter("C")
        ranked = rank(candidates.entries)
        enter("D")
        others = candidates.others
        if result.votes_in_window == 0 and others:
            # An empty vote table (a new database beside an existing cache) must not wipe
            # the cache: with no votes at all, nothing is planned.
            result.notes.append("no votes in the window: the cache is left as it is")
            others = []
        plan = make_plan(ranked, others, [t.limit for t in result.tiers], presorted=True)
        result.plan = plan
        final: dict[str, int] | dict[str, tuple[int, int]]
        if dry_run:
            for state, change in zip(result.tiers, plan.tiers, strict=True):
                state.files, state.bytes = change.files_after, change.bytes_after
            final = _planned_placement(inventory.local, plan)
        else:
            gc.freeze()
            if collecting:
                gc.enable()
            executor = await execute_plan(
                config,
                repo,
                db,
                plan,
                inventory,
                candidates,
                result,
                lookup,
                session_factory,
                stop=stop,
                now=now,
                progress_bar=progress_bar,
            )
            final = executor.local
            _tier_states(result, executor.usage, executor.counts)
        result.votes_local = sum(e.votes for e in ranked if e.path in final) + sum(
            votes for path, votes in candidates.votes_of_others.items() if path in final
        )
        if result.stopped:
            return
        enter("E")
        if dry_run:
            result.votes_dropped = db.count_votes_before(now - config.cache.vote_window)
            result.remote_sizes_dropped = db.count_remote_sizes_before(
                now - config.cache.size_db_ttl
            )
        else:
            stale = [path for path in inventory.stale if path not in final]
            cleanup(config, db, stale, result, now=now)
    finally:
        enter("")
        gc.unfreeze()
        if collecting:
            gc.enable()


def _planned_placement(local: dict[str, tuple[int, int]], plan: Plan) -> dict[str, int]:
    final = {path: tier for path, (_size, tier) in local.items()}
    for step in plan.steps:
        if step.source is not None:
            final.pop(step.path, None)
        if step.target is not None:
            final[step.path] = step.target
    return final


def _tier_states(result: CacheResult, usage: list[int], counts: list[int]) -> None:
    for state in result.tiers:
        state.bytes, state.files = usage[state.index], counts[state.index]
