"""Phase A, inventory: walk every tier; ``local_sizes`` is the cache of what is there, so only
names the table does not know are stat'ed; temporary files of crashed runs go."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

from pypi_mirror.cache.download import StopSignal
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.db import Database, LocalFile
from pypi_mirror.names import filename_of, is_valid_file_path
from pypi_mirror.repo import Repo, is_temp_name

log = logging.getLogger(__name__)

# Database writes of phases A and D are grouped: one short transaction per batch.
DB_BATCH = 1000
INVALID_PATHS_LOGGED = 10
# Threads reading tier folders and stat'ing new files: on a cold cache each read is a disk
# wait, and the disk serves many at once (on a warm cache the extra threads cost nothing).
SCAN_WORKERS = 16
STAT_CHUNK = 1000


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
