"""Phase B, candidates and their sizes: files with enough votes from distinct prefixes; sizes
from the disk, from ``remote_sizes``, from the index we hold (``json/{name}``), else HEAD
upstream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from pypi_mirror.cache import download as downloader
from pypi_mirror.cache.download import Digest, StopSignal
from pypi_mirror.cache.inventory import Inventory
from pypi_mirror.cache.lookup import IndexLookup, digest_for, distribution_path
from pypi_mirror.cache.plan import Entry
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.config import Config
from pypi_mirror.db import Database
from pypi_mirror.names import METADATA_SUFFIX, is_valid_file_path
from pypi_mirror.progress import Progress
from pypi_mirror.upstream import UpstreamUrls, is_transient_status

log = logging.getLogger(__name__)

HEAD_CONCURRENCY = 16
# Sizes and hashes are those of the bytes as stored: no content coding on the way.
IDENTITY = {"Accept-Encoding": "identity"}


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
    the upstream could not say (errors after the retries, or a stop). A file whose size could
    not be learned is a failure of this run: it is not cached, and the run says so."""
    reason = "stopped"
    for attempt in range(retries + 1):
        if stop.is_set():
            return False, None
        result.head_requests += 1
        transient = True
        try:
            async with session.head(url, headers=IDENTITY, allow_redirects=True) as response:
                if response.status in downloader.GONE_STATUSES:
                    return True, None
                if response.status == 200 and response.content_length is not None:
                    return True, response.content_length
                reason = f"HTTP {response.status}"
                if response.status == 200:
                    reason, transient = "no Content-Length", False
                else:
                    transient = is_transient_status(response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = "timeout" if isinstance(error, TimeoutError) else str(error) or repr(error)
        if not transient:
            break  # the same question gets the same answer
        if attempt < retries:
            await asyncio.sleep(downloader.RETRY_BACKOFF * 2**attempt)
    log.warning("HEAD %s: %s; size unknown, not cached this run", url, reason)
    result.size_errors += 1
    result.fail(f"size of {url}: {reason}")
    return False, None
