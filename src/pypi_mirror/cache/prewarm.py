"""`pypi-mirror cache prewarm`: download every file a requirements or lock file names, now,
verified against the hash it gives, into the hottest tier with room.

A requirement's files are found by their sha256 among the project's files in the index we
hold (or, for a project not held, the upstream's JSON API); a lock file's by its URL, mapped to
PyPI's file path. Each placed file is recorded in ``local_sizes`` as phase D records its
downloads, so the next sync counts it as cached. A wheel's PEP 658 ``.metadata`` file comes
along when the index advertises it with a hash: installers ask for it before the wheel.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import aiohttp

from pypi_mirror.cache import download as downloader
from pypi_mirror.cache.download import Digest
from pypi_mirror.cache.lockfiles import Wanted
from pypi_mirror.cache.lookup import IndexLookup
from pypi_mirror.config import Config
from pypi_mirror.db import Database, LocalFile
from pypi_mirror.filters import filters_of
from pypi_mirror.index.render import IndexFile, RenderError, index_files, parse_pypi_json
from pypi_mirror.index.store import load_index_files
from pypi_mirror.names import file_path_from_url, filename_of, metadata_path
from pypi_mirror.progress import Progress
from pypi_mirror.repo import Repo
from pypi_mirror.upstream import UpstreamUrls, make_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    path: str
    sha256: str
    size: int | None
    origin: str
    metadata_sha256: str | None = None


@dataclass
class PrewarmResult:
    downloaded: list[tuple[str, int, int]] = field(default_factory=list)  # path, tier, size
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "what: why"
    skipped: list[str] = field(default_factory=list)

    @property
    def downloaded_bytes(self) -> int:
        return sum(size for _path, _tier, size in self.downloaded)

    def summary(self) -> str:
        return (
            f"prewarm: {len(self.downloaded)} downloaded ({self.downloaded_bytes:,} bytes), "
            f"{len(self.cached)} already cached, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped"
        )


class _Projects:
    """A project's files by sha256: from the held index, else the upstream's JSON API."""

    def __init__(self, repo: Repo, session: aiohttp.ClientSession, urls: UpstreamUrls) -> None:
        self.repo = repo
        self.session = session
        self.urls = urls
        self._files: dict[str, dict[str, IndexFile] | str] = {}

    async def files(self, name: str) -> dict[str, IndexFile] | str:
        """sha256 -> entry, or why the project's files are unknown."""
        if name not in self._files:
            self._files[name] = await self._load(name)
        return self._files[name]

    async def _load(self, name: str) -> dict[str, IndexFile] | str:
        try:
            listed = load_index_files(self.repo, name)
            if listed is None:
                async with self.session.get(self.urls.project_json(name)) as response:
                    if response.status != 200:
                        return f"the upstream JSON API answers HTTP {response.status}"
                    listed = index_files(parse_pypi_json(await response.read()))
        except (RenderError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            return f"its file list could not be read ({error or type(error).__name__})"
        return {f.sha256: f for f in listed if f.sha256}


async def resolve(
    repo: Repo, wanted: list[Wanted], session: aiohttp.ClientSession, urls: UpstreamUrls
) -> tuple[list[Target], list[str], list[str]]:
    """The files to fetch (one per path), what failed and what was skipped."""
    targets: dict[str, Target] = {}
    failed: list[str] = []
    skipped: list[str] = []
    projects = _Projects(repo, session, urls)
    by_url: list[tuple[str, Wanted]] = []
    for item in wanted:
        if item.url is not None:
            path = file_path_from_url(item.url)
            if path is None:
                skipped.append(f"{item.origin}: {item.url}: not a PyPI file URL")
            else:
                by_url.append((path, item))
            continue
        assert item.name is not None
        files = await projects.files(item.name)
        if isinstance(files, str):
            failed.append(f"{item.origin}: {item.name}: {files}")
            continue
        entry = files.get(item.sha256)
        if entry is None:
            failed.append(f"{item.origin}: {item.name}: no file with sha256 {item.sha256}")
        elif entry.path not in targets:
            targets[entry.path] = Target(
                entry.path, item.sha256, entry.size, item.origin, entry.metadata_sha256
            )
    entries = IndexLookup(repo).find(path for path, _item in by_url)
    for path, item in by_url:
        entry = entries.get(path)
        if entry is not None and entry.sha256 and entry.sha256 != item.sha256:
            failed.append(
                f"{item.origin}: {filename_of(path)}: the lock's sha256 is not the index's"
            )
            continue
        size = item.size if item.size is not None else (entry.size if entry else None)
        metadata = entry.metadata_sha256 if entry is not None else None
        targets.setdefault(path, Target(path, item.sha256, size, item.origin, metadata))
    return list(targets.values()), failed, skipped


class _Placer:
    """Downloads into the hottest tier with room, keeping each tier's recorded usage."""

    def __init__(self, config: Config, repo: Repo, db: Database, result: PrewarmResult) -> None:
        self.config = config
        self.repo = repo
        self.db = db
        self.result = result
        self.urls = UpstreamUrls(config)
        self.usage = [0] * len(repo.tiers)
        for tier, _files, size in db.local_usage():
            if 0 <= tier < len(self.usage):
                self.usage[tier] = int(size)

    def held_in(self, path: str) -> int | None:
        for tier in self.repo.tiers:
            if self.repo.tier_file(tier.index, path).is_file():
                return tier.index
        return None

    def tier_with_room(self, size: int) -> int | None:
        for tier in self.repo.tiers:
            if self.usage[tier.index] + size <= tier.size_limit:
                return tier.index
        return None

    async def fetch(
        self, session: aiohttp.ClientSession, path: str, sha256: str, size: int | None, tier: int
    ) -> str | None:
        """Download one file into ``tier`` and record it; None, or why it failed."""
        reserved = size or 0
        self.usage[tier] += reserved  # before the first byte: concurrent fetches see it
        outcome = await downloader.download(
            session,
            self.urls.file(path),
            self.repo.tier_file(tier, path),
            digest=Digest("sha256", sha256),
            size=size,
            retries=self.config.sync.retry,
        )
        self.usage[tier] -= reserved
        if outcome.status != "ok":
            return outcome.reason or outcome.status
        self.usage[tier] += outcome.size
        # Recorded as phase D records a placed download: the next sync's inventory trusts it.
        self.db.set_local_files([LocalFile(path, outcome.size, tier)])
        self.result.downloaded.append((path, tier, outcome.size))
        return None

    async def place(self, session: aiohttp.ClientSession, target: Target) -> None:
        tier = self.held_in(target.path)
        if tier is not None:
            self.result.cached.append(target.path)
            self._record_existing(target.path, tier)
        elif filters_of(self.config.filters).keeps_out_of_cache(target.path):
            # The next sync would delete it (a denied project, or filters.cache_exclude).
            self.result.skipped.append(f"{target.origin}: {filename_of(target.path)}: filters")
            return
        else:
            size = (
                target.size if target.size is not None else await self._head_size(session, target)
            )
            limit = self.config.cache.filesize_limit
            if size is not None and size > limit:
                # The cache manager never keeps such a file: it would go at the next sync.
                self.result.failed.append(
                    f"{target.origin}: {filename_of(target.path)}: {size:,} bytes, over "
                    f"cache.filesize_limit ({limit:,})"
                )
                return
            tier = self.tier_with_room(size or 0)
            if tier is None:
                self.result.failed.append(
                    f"{target.origin}: {filename_of(target.path)}: no tier has room "
                    f"for {size or 0:,} bytes"
                )
                return
            reason = await self.fetch(session, target.path, target.sha256, target.size, tier)
            if reason is not None:
                self.result.failed.append(f"{target.origin}: {filename_of(target.path)}: {reason}")
                return
        if target.metadata_sha256 and self.held_in(metadata_path(target.path)) is None:
            meta = metadata_path(target.path)
            reason = await self.fetch(session, meta, target.metadata_sha256, None, tier)
            if reason is not None:
                self.result.failed.append(f"{target.origin}: {filename_of(meta)}: {reason}")

    def _record_existing(self, path: str, tier: int) -> None:
        try:
            size = self.repo.tier_file(tier, path).stat().st_size
        except OSError:
            return
        self.db.set_local_files([LocalFile(path, size, tier)])

    async def _head_size(self, session: aiohttp.ClientSession, target: Target) -> int | None:
        try:
            async with session.head(self.urls.file(target.path)) as response:
                return response.content_length if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None


async def prewarm(
    config: Config, repo: Repo, db: Database, wanted: list[Wanted], *, progress_bar: bool | None
) -> PrewarmResult:
    result = PrewarmResult()
    async with make_session(config) as session:
        targets, failed, skipped = await resolve(repo, wanted, session, UpstreamUrls(config))
        result.failed.extend(failed)
        result.skipped.extend(skipped)
        placer = _Placer(config, repo, db, result)
        queue = list(reversed(targets))
        with Progress("prewarm", total=len(targets), unit="files", bar=progress_bar) as progress:

            async def worker() -> None:
                while queue:
                    await placer.place(session, queue.pop())
                    progress.advance()

            workers = max(1, min(config.sync.concurrent_downloads, len(targets)))
            await asyncio.gather(*(worker() for _ in range(workers)))
    return result
