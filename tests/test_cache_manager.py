"""Cache management end to end: two tiers (temporary folders), the fake upstream, real sqlite.

Votes go in through ``Database.add_votes`` (the server's own path to the table); the index the
mirror holds is fetched from the fake and stored with the index store, as the index sync does.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pypi_mirror.cache import download as downloader
from pypi_mirror.cache.download import Digest, Outcome
from pypi_mirror.cache.manager import run_cache_management
from pypi_mirror.cache.report import CacheResult, format_plan
from pypi_mirror.config import Config, config_from_dict
from pypi_mirror.db import Database, LocalFile, Vote
from pypi_mirror.index.store import save_project
from pypi_mirror.names import project_names
from pypi_mirror.repo import Repo, temp_path_for
from tests.fakepypi import FakeFile, FakePyPI

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloader, "RETRY_BACKOFF", 0.0)


class World:
    """A mirror with two tiers and a fake upstream; tier limits are set per test."""

    def __init__(self, tmp_path: Path, fake: FakePyPI) -> None:
        self.tmp = tmp_path
        self.fake = fake
        self.tiers = [tmp_path / "hot", tmp_path / "cold"]
        for tier in self.tiers:
            tier.mkdir()
        self.root = tmp_path / "repo"
        self.limits = [0, 0]
        self.cache: dict[str, Any] = {}
        self.sync: dict[str, Any] = {"retry": 0}
        self.db = Database.in_repo(self.root)
        self._prefixes = 0

    @property
    def config(self) -> Config:
        return config_from_dict(self.config_dict())

    def config_dict(self) -> dict[str, Any]:
        return {
            "repo_path": str(self.root),
            "upstream": {"pypi_url": self.fake.url, "packages_url": self.fake.files_url},
            "cache": {
                "tiers": [
                    {"path": str(path), "size_limit": limit}
                    for path, limit in zip(self.tiers, self.limits, strict=True)
                ],
                "min_vote_count": 2,
                "vote_window": "7d",
                **self.cache,
            },
            "sync": self.sync,
        }

    @property
    def repo(self) -> Repo:
        return Repo(self.config)

    def publish(self, project: str, version: str = "1.0", size: int = 1000) -> FakeFile:
        return self.fake.add_wheel(project, version, extra_bytes=size)

    def hold_index(self, *projects: str) -> None:
        """Store the upstream's JSON of each project, as the index sync would."""
        repo = self.repo
        repo.create_folders()
        for project in projects:
            with urllib.request.urlopen(f"{self.fake.url}/pypi/{project}/json") as response:
                save_project(repo, self.db, response.read(), on_demand=False)

    def vote(self, path: str, prefixes: int, when: float = NOW - 3600) -> None:
        """Votes from ``prefixes`` distinct networks (never the same one twice per world)."""
        votes = []
        for _ in range(prefixes):
            self._prefixes += 1
            votes.append(
                Vote(path, f"10.{self._prefixes // 256}.{self._prefixes % 256}.0/24", when)
            )
        assert self.db.add_votes(votes, dedup_window=300) == prefixes

    async def run(self, *, dry_run: bool = False, **kwargs: Any) -> CacheResult:
        kwargs.setdefault("stop", threading.Event())
        return await run_cache_management(
            self.config, self.db, self.repo, dry_run=dry_run, now=NOW, progress_bar=False, **kwargs
        )

    def where(self, path: str) -> int | None:
        found = [i for i, tier in enumerate(self.tiers) if (tier / path).is_file()]
        assert len(found) <= 1, f"{path} is in tiers {found}"
        return found[0] if found else None

    def content(self, path: str) -> bytes:
        tier = self.where(path)
        assert tier is not None
        return (self.tiers[tier] / path).read_bytes()

    def files_on_disk(self) -> dict[str, tuple[int, int]]:
        """Every regular file of every tier: path -> (size, tier), temporary files included."""
        found = {}
        for index, tier in enumerate(self.tiers):
            for folder, _dirs, names in os.walk(tier):
                for name in names:
                    full = Path(folder) / name
                    found[str(full.relative_to(tier))] = (full.stat().st_size, index)
        return found

    def usage_on_disk(self) -> list[int]:
        usage = [0] * len(self.tiers)
        for size, tier in self.files_on_disk().values():
            usage[tier] += size
        return usage

    def db_local(self) -> dict[str, tuple[int, int]]:
        return {row.path: (row.size, row.tier) for row in self.db.all_local_files()}

    def assert_db_agrees_with_disk(self) -> None:
        assert self.db_local() == self.files_on_disk()

    def place(self, tier: int, file: FakeFile | str, content: bytes | None = None) -> Path:
        """Put a file straight into a tier (as a previous run would have)."""
        path = file if isinstance(file, str) else file.path
        data = content if content is not None else file.content  # type: ignore[union-attr]
        target = self.tiers[tier] / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target


@pytest.fixture
def world(tmp_path: Path, fake_pypi: FakePyPI) -> Iterator[World]:
    w = World(tmp_path, fake_pypi)
    yield w
    w.db.close()


@pytest.fixture
def watch_tiers(world: World, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Measure every tier on disk after every delete, move and download of the run."""
    samples: list[list[int]] = []
    original_delete = Repo.delete_file
    original_move = Repo.move_between_tiers
    original_download = downloader.download

    def delete_file(self: Repo, tier: int, path: str) -> None:
        original_delete(self, tier, path)
        samples.append(world.usage_on_disk())

    def move_between_tiers(self: Repo, path: str, source: int, target: int) -> None:
        original_move(self, path, source, target)
        samples.append(world.usage_on_disk())

    async def download(*args: Any, **kwargs: Any) -> Outcome:
        outcome = await original_download(*args, **kwargs)
        # Other downloads may be in flight: their temporary files count too.
        samples.append(world.usage_on_disk())
        return outcome

    monkeypatch.setattr(Repo, "delete_file", delete_file)
    monkeypatch.setattr(Repo, "move_between_tiers", move_between_tiers)
    monkeypatch.setattr(downloader, "download", download)
    return samples


def assert_within_limits(samples: list[list[int]], limits: list[int]) -> None:
    assert samples, "no step was measured"
    for sample in samples:
        for used, limit in zip(sample, limits, strict=True):
            assert used <= limit, (sample, limits)


# -- downloads into the right tiers ----------------------------------------------------------


async def test_popular_files_are_downloaded_into_the_right_tiers(
    world: World, watch_tiers: list[list[int]]
) -> None:
    files = [world.publish(name, size=3000) for name in ("alpha", "beta", "gamma", "delta")]
    lonely = world.publish("lonely", size=10)
    world.hold_index("alpha", "beta", "gamma", "delta", "lonely")
    size = max(f.size for f in files)
    world.limits = [2 * size, size]
    for file, prefixes in zip(files, (5, 4, 3, 2), strict=True):
        world.vote(file.path, prefixes)
    world.vote(lonely.path, 1)  # one network only: below min_vote_count

    result = await world.run()

    alpha, beta, gamma, delta = files
    assert world.where(alpha.path) == 0
    assert world.where(beta.path) == 0
    assert world.where(gamma.path) == 1
    assert world.where(delta.path) is None  # no room left anywhere
    assert world.where(lonely.path) is None
    for file in (alpha, beta, gamma):
        assert world.content(file.path) == file.content
        (request,) = world.fake.requests_matching(file.filename, "GET")
        assert request.headers["Accept-Encoding"] == "identity"  # the bytes as stored
    assert result.downloaded_files == 3
    assert result.downloaded_bytes == alpha.size + beta.size + gamma.size
    assert result.candidates == 4
    assert result.votes_in_window == 5 + 4 + 3 + 2 + 1
    assert result.votes_local == 5 + 4 + 3
    assert result.hit_rate == pytest.approx(12 / 15)
    assert not result.failures
    world.assert_db_agrees_with_disk()
    assert_within_limits(watch_tiers, world.limits)
    assert [(t.files, t.bytes) for t in result.tiers] == [
        (2, alpha.size + beta.size),
        (1, gamma.size),
    ]
    summary = result.summary()
    assert "hit rate 80.0%" in summary
    assert "downloaded 3 files" in summary


async def test_change_of_popularity_promotes_demotes_and_evicts(
    world: World, watch_tiers: list[list[int]]
) -> None:
    alpha, beta, gamma, delta = (world.publish(n, size=3000) for n in ("a1", "b2", "c3", "d4"))
    world.hold_index("a1", "b2", "c3", "d4")
    size = max(f.size for f in (alpha, beta, gamma, delta))
    world.limits = [2 * size, size]
    for file, prefixes in ((alpha, 5), (beta, 4), (gamma, 3), (delta, 2)):
        world.vote(file.path, prefixes)
    await world.run()
    assert [world.where(f.path) for f in (alpha, beta, gamma, delta)] == [0, 0, 1, None]
    watch_tiers.clear()

    # Now gamma (3 + 4) and delta (2 + 4) beat alpha (5) and beta (4).
    world.vote(gamma.path, 4)
    world.vote(delta.path, 4)
    requests_before = len(world.fake.requests_matching("/packages/", "GET"))
    result = await world.run()

    assert world.where(gamma.path) == 0  # promoted
    assert world.where(delta.path) == 0  # downloaded
    assert world.where(alpha.path) == 1  # demoted
    assert world.where(beta.path) is None  # evicted
    assert world.content(alpha.path) == alpha.content
    assert world.content(gamma.path) == gamma.content
    assert (result.moved_files, result.downloaded_files, result.deleted_files) == (2, 1, 1)
    # Only delta came from the upstream: moves never download.
    assert len(world.fake.requests_matching("/packages/", "GET")) == requests_before + 1
    world.assert_db_agrees_with_disk()
    assert_within_limits(watch_tiers, world.limits)


async def test_files_below_the_vote_threshold_or_too_large_are_evicted(world: World) -> None:
    kept, unloved = world.publish("kept", size=500), world.publish("unloved", size=500)
    huge = world.publish("huge", size=5000)
    world.hold_index("kept", "unloved", "huge")
    world.limits = [10**6, 10**6]
    world.cache = {"filesize_limit": huge.size - 1}
    for file in (kept, unloved, huge):
        world.place(1, file)
    world.vote(kept.path, 3)
    world.vote(unloved.path, 1)
    world.vote(huge.path, 9)

    result = await world.run()

    assert world.where(kept.path) == 0  # promoted: there is room in the hot tier
    assert world.where(unloved.path) is None
    assert world.where(huge.path) is None
    assert result.deleted_files == 2
    world.assert_db_agrees_with_disk()


async def test_no_votes_at_all_leaves_an_existing_cache_alone(world: World) -> None:
    file = world.publish("old", size=100)
    world.limits = [10**6, 10**6]
    world.place(1, file)
    result = await world.run()
    assert world.where(file.path) == 1
    assert result.deleted_files == 0
    assert any("no votes" in note for note in result.notes)
    world.assert_db_agrees_with_disk()


async def test_swap_between_two_full_tiers(world: World, watch_tiers: list[list[int]]) -> None:
    a, b, x, y = (world.publish(n, size=2000) for n in ("sa", "sb", "sx", "sy"))
    world.hold_index("sa", "sb", "sx", "sy")
    size = max(f.size for f in (a, b, x, y))
    world.limits = [2 * size, 2 * size]
    world.place(0, a)
    world.place(0, x)
    world.place(1, b)
    world.place(1, y)
    for file, prefixes in ((b, 10), (x, 9), (a, 8), (y, 7)):
        world.vote(file.path, prefixes)

    result = await world.run()

    assert [world.where(f.path) for f in (b, x, a, y)] == [0, 0, 1, 1]
    assert result.plan is not None and result.plan.cycle_breaks == 1
    assert world.content(a.path) == a.content
    world.assert_db_agrees_with_disk()
    assert_within_limits(watch_tiers, world.limits)


# -- verified bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
async def test_a_bad_download_is_rejected_and_nothing_is_placed(world: World, fault: str) -> None:
    good, bad = world.publish("good", size=4000), world.publish("bad", size=4000)
    world.hold_index("good", "bad")
    world.limits = [10**6, 10**6]
    world.sync = {"retry": 1}
    world.vote(good.path, 3)
    world.vote(bad.path, 4)
    getattr(world.fake, fault)(bad.filename)

    result = await world.run()

    assert world.where(good.path) == 0
    assert world.where(bad.path) is None
    assert result.download_errors == 1
    assert result.downloaded_files == 1
    assert len(world.fake.requests_matching(bad.filename, "GET")) == 2  # one retry
    assert any(bad.path in failure for failure in result.failures)
    assert set(world.files_on_disk()) == {good.path}  # no temporary file either
    world.assert_db_agrees_with_disk()


async def test_failing_upstream_stops_downloads_after_the_threshold(world: World) -> None:
    files = [world.publish(f"p{n}", size=100) for n in range(6)]
    world.hold_index(*(f"p{n}" for n in range(6)))
    world.limits = [10**6, 10**6]
    world.sync = {"retry": 1, "download_error_threshold": 2, "concurrent_downloads": 1}
    for file in files:
        world.vote(file.path, 2)
    world.fake.fail("/files/packages/", status=503, times=None)

    result = await world.run()

    # Two files, each tried twice (one retry), then phase D gives up.
    assert len(world.fake.requests_matching("/files/packages/", "GET")) == 4
    assert result.download_errors == 2
    assert any("stopped after 2 consecutive errors" in f for f in result.failures)
    assert world.files_on_disk() == {}


async def test_a_file_gone_upstream_is_skipped_without_an_error(world: World) -> None:
    gone = [world.publish("vanishing", v, size=100) for v in ("1.0", "2.0")]
    kept = world.publish("staying", size=100)
    world.hold_index("vanishing", "staying")
    for file in gone:
        world.fake.remove_file("vanishing", file.filename)
    world.limits = [10**6, 10**6]
    world.sync = {"retry": 2, "download_error_threshold": 1, "concurrent_downloads": 1}
    for file in gone:
        world.vote(file.path, 5)
    world.vote(kept.path, 2)

    result = await world.run()

    assert result.gone == 2
    assert result.download_errors == 0
    assert not result.failures
    assert world.where(kept.path) == 0
    for file in gone:
        assert len(world.fake.requests_matching(file.filename, "GET")) == 1  # 404: no retry

    # The 404 is remembered (remote_sizes, size NULL): the next run does not ask again.
    again = await world.run()
    assert again.gone == 0
    for file in gone:
        assert len(world.fake.requests_matching(file.filename, "GET")) == 1


async def test_metadata_files_are_cached_and_checked_against_their_own_hash(
    world: World,
) -> None:
    file = world.publish("withmeta", size=100)
    other = world.publish("badmeta", size=100)
    world.hold_index("withmeta", "badmeta")
    assert file.metadata is not None and file.metadata_sha256 is not None
    world.limits = [10**6, 10**6]
    meta, bad_meta = f"{file.path}.metadata", f"{other.path}.metadata"
    world.vote(meta, 3)
    world.vote(bad_meta, 2)
    world.fake.corrupt(f"{other.filename}.metadata")

    result = await world.run()

    assert world.content(meta) == file.metadata
    assert hashlib.sha256(world.content(meta)).hexdigest() == file.metadata_sha256
    assert world.where(bad_meta) is None
    assert result.download_errors == 1
    assert world.where(file.path) is None  # the wheel itself got no votes
    # The index cannot tell a metadata file's size: HEAD once, then remote_sizes remembers.
    assert len(world.fake.requests_matching(meta, "HEAD")) == 1
    await world.run()
    assert len(world.fake.requests_matching(meta, "HEAD")) == 1
    assert len(world.fake.requests_matching(bad_meta, "HEAD")) == 1
    world.assert_db_agrees_with_disk()


async def test_metadata_without_an_advertised_hash_is_not_fetched(world: World) -> None:
    file = world.fake.add_wheel("nometa", "1.0", metadata=False)
    world.hold_index("nometa")
    world.limits = [10**6, 10**6]
    world.vote(f"{file.path}.metadata", 3)

    result = await world.run()

    assert world.fake.requests_matching("nometa", "HEAD") == []
    assert world.fake.requests_matching("/files/", "GET") == []
    assert (result.candidates, result.download_errors, result.failures) == (0, 0, [])


async def test_sizes_come_from_the_index_without_asking_the_upstream(world: World) -> None:
    file = world.publish("inthere", size=100)
    unindexed = world.publish("notheld", size=100)
    world.hold_index("inthere")
    world.limits = [10**6, 10**6]
    world.vote(file.path, 2)
    world.vote(unindexed.path, 2)

    result = await world.run()

    assert world.fake.requests_matching(file.filename, "HEAD") == []
    # Not in the index we hold: HEAD for the size, and checked against the path's blake2b.
    assert len(world.fake.requests_matching(unindexed.filename, "HEAD")) == 1
    assert world.content(unindexed.path) == unindexed.content
    assert result.downloaded_files == 2


# -- moves ----------------------------------------------------------------------------------


def second_filesystem(near: Path) -> Path | None:
    """A folder on another filesystem than ``near`` (tmpfs at /dev/shm), if there is one."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    if os.stat(shm).st_dev == os.stat(near).st_dev:
        return None
    return Path(tempfile.mkdtemp(prefix="pypi-mirror-test-", dir=shm))


async def moves_keep_content_and_open_readers(world: World) -> None:
    """Promote one file and demote another; a reader that opened each file before the move
    reads it whole after it."""
    up, down = world.publish("up", size=5000), world.publish("down", size=5000)
    world.hold_index("up", "down")
    size = max(up.size, down.size)
    world.limits = [size, 4 * size]
    world.place(1, up)
    world.place(0, down)
    world.vote(up.path, 5)
    world.vote(down.path, 2)
    readers = {
        up.path: open(world.tiers[1] / up.path, "rb"),  # noqa: SIM115
        down.path: open(world.tiers[0] / down.path, "rb"),  # noqa: SIM115
    }
    try:
        result = await world.run()
        for file in (up, down):
            assert readers[file.path].read() == file.content
    finally:
        for reader in readers.values():
            reader.close()
    assert result.moved_files == 2
    assert world.where(up.path) == 0
    assert world.where(down.path) == 1
    assert world.content(up.path) == up.content
    assert world.content(down.path) == down.content
    assert not any(".pmtmp-" in path for path in world.files_on_disk())
    world.assert_db_agrees_with_disk()


async def test_move_across_filesystems_with_exdev_fallback(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def rename(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        # Between tiers the tiers look like two filesystems; within a tier rename works.
        def tier_of(path: Any) -> int | None:
            return next(
                (i for i, t in enumerate(world.tiers) if Path(path).is_relative_to(t)), None
            )

        if tier_of(source) != tier_of(target):
            renames.append((str(source), str(target)))
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    await moves_keep_content_and_open_readers(world)
    assert len(renames) == 2  # both moves tried rename first, then copied


async def test_move_between_two_real_filesystems(world: World) -> None:
    other = second_filesystem(world.tmp)
    if other is None:
        pytest.skip("no second filesystem (tmpfs at /dev/shm) to put a tier on")
    try:
        world.tiers[1] = other
        await moves_keep_content_and_open_readers(world)
    finally:
        shutil.rmtree(other, ignore_errors=True)


async def test_a_file_being_read_while_deleted_is_read_whole(world: World) -> None:
    file = world.publish("doomed", size=20000)
    keep = world.publish("keeper", size=10)
    world.hold_index("doomed", "keeper")
    world.limits = [10**6, 10**6]
    world.place(0, file)
    world.vote(keep.path, 2)  # some votes, but none for the doomed file
    with open(world.tiers[0] / file.path, "rb") as reader:
        head = reader.read(100)
        await world.run()
        assert world.where(file.path) is None
        assert head + reader.read() == file.content


# -- inventory -------------------------------------------------------------------------------


async def test_inventory_removes_temporary_leftovers_and_ignores_strangers(world: World) -> None:
    file = world.publish("found", size=100)
    world.hold_index("found")
    world.limits = [10**6, 10**6]
    world.place(1, file)
    leftover = temp_path_for(world.tiers[0] / file.path)
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a download")
    stranger = world.tiers[1] / "README.txt"
    stranger.write_text("not a package")
    world.vote(file.path, 2)

    result = await world.run()

    assert not leftover.exists()
    assert stranger.exists()  # not ours to delete, and never counted
    assert result.temp_removed == 1
    assert result.invalid_paths == 1
    assert world.where(file.path) == 0
    assert world.db_local() == {file.path: (file.size, 0)}


async def test_a_repeated_inventory_does_not_stat_known_files(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [world.publish(f"known{n}", size=100) for n in range(5)]
    world.limits = [10**6, 10**6]
    for file in files:
        world.place(1, file)
        world.vote(file.path, 2)
    first = await world.run()
    assert first.stat_calls == 5

    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        answer = real_stat(path, *args, **kwargs)
        inside = any(str(path).startswith(str(tier) + os.sep) for tier in world.tiers)
        if inside and stat.S_ISREG(answer.st_mode):  # files, not the folders a move creates
            stats.append(str(path))
        return answer

    monkeypatch.setattr(os, "stat", counting_stat)
    newcomer = world.publish("newcomer", size=100)
    world.place(1, newcomer)
    second = await world.run()

    assert stats == [str(world.tiers[1] / newcomer.path)]  # only the file it did not know
    assert second.stat_calls == 1
    world.assert_db_agrees_with_disk()


async def test_after_a_crash_the_next_run_makes_the_database_agree_with_the_disk(
    world: World,
) -> None:
    """The state ``kill -9`` can leave: a temporary file mid-download, a file renamed into
    place whose row was never written, a row whose file was deleted, a row with the wrong
    tier (moved, not recorded), and both copies of a cross-filesystem move."""
    a, b, c, d = (world.publish(n, size=100) for n in ("ca", "cb", "cc", "cd"))
    world.hold_index("ca", "cb", "cc", "cd")
    world.limits = [10**6, 10**6]
    for file in (a, b, c, d):
        world.vote(file.path, 2)
    partial = temp_path_for(world.tiers[0] / a.path)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(a.content[:50])
    world.place(0, b)  # renamed into place, no row
    world.db.set_local_files([LocalFile(c.path, c.size, 1)])  # row, no file
    world.place(1, d)  # moved to tier 1, row still says tier 0 ... and the copy remained
    world.place(0, d)
    world.db.set_local_files([LocalFile(d.path, d.size, 0)])

    result = await world.run()

    assert not partial.exists()
    assert {f.path: world.where(f.path) for f in (a, b, c, d)} == {
        a.path: 0,
        b.path: 0,
        c.path: 0,
        d.path: 0,
    }
    assert result.downloaded_files == 2  # a and c
    world.assert_db_agrees_with_disk()


async def test_cleanup_drops_old_votes_and_rows_of_vanished_files(world: World) -> None:
    kept, gone = world.publish("ea", size=100), world.publish("eb", size=100)
    world.hold_index("ea", "eb")
    world.limits = [10**6, 10**6]
    world.vote(kept.path, 2)
    world.vote(kept.path, 1, when=NOW - 30 * DAY)  # outside vote_window
    world.vote(gone.path, 1)  # below min_vote_count: never fetched again
    world.db.set_local_files([LocalFile(gone.path, gone.size, 0)])  # its file is not on disk
    votes_before = world.db.vote_count()

    result = await world.run()

    assert result.votes_dropped == 1 and world.db.vote_count() == votes_before - 1
    assert gone.path not in world.db.local_files_map()
    assert "cleanup dropped 1 old votes" in result.summary()
    assert "1 rows of files no longer on disk" in result.summary()
    world.assert_db_agrees_with_disk()


KILLED_RUN = """
import asyncio, sys, threading, time
from pathlib import Path
from pypi_mirror.cache import download
from pypi_mirror.cache.manager import run_cache_management
from pypi_mirror.config import load_config
from pypi_mirror.db import Database
from pypi_mirror.repo import Repo

config_path, marker, now = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
original = download.Digest.hasher

def hasher(self):
    inner = original(self)
    chunks = []

    class PauseInTheMiddle:
        def update(self, data):
            chunks.append(data)
            inner.update(data)
            if len(chunks) == 2:  # the first chunk is on disk: wait here to be killed
                marker.write_text("mid-body")
                time.sleep(600)

        def hexdigest(self):
            return inner.hexdigest()

    return PauseInTheMiddle()

download.Digest.hasher = hasher
config = load_config(config_path)
db = Database.in_repo(config.repo_path)
asyncio.run(
    run_cache_management(
        config, db, Repo(config), dry_run=False, stop=threading.Event(), now=now
    )
)
"""


async def test_kill_9_in_the_middle_of_a_download(world: World) -> None:
    big = world.publish("killed", size=3_000_000)
    small = world.publish("placed", size=100)
    world.hold_index("killed", "placed")
    world.limits = [10**8, 10**8]
    world.sync = {"retry": 0, "concurrent_downloads": 1}
    world.vote(small.path, 3)  # ranked first: downloaded before the big one
    world.vote(big.path, 2)
    config_path = world.tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(world.config_dict()))
    marker = world.tmp / "mid-body"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(config_path), str(marker), str(NOW)],
        cwd=Path(__file__).parent.parent,
    )
    try:
        for _ in range(600):
            if marker.exists() or child.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert marker.exists(), "the child never reached the middle of the download"
    finally:
        child.kill()  # SIGKILL: no cleanup of any kind
        child.wait()

    on_disk = world.files_on_disk()
    assert big.path not in on_disk  # nothing half-written under the real name
    partial = [path for path in on_disk if ".pmtmp-" in path]
    assert len(partial) == 1 and 0 < on_disk[partial[0]][0] < big.size
    assert on_disk[small.path] == (small.size, 0)

    result = await world.run()

    assert set(world.files_on_disk()) == {small.path, big.path}
    assert world.content(big.path) == big.content
    assert result.temp_removed == 1
    world.assert_db_agrees_with_disk()


# -- dry run, stop ---------------------------------------------------------------------------


def snapshot_db(path: Path) -> list[tuple[str, list[tuple[Any, ...]]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, sorted(conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables]
    finally:
        conn.close()


async def test_dry_run_prints_the_plan_and_changes_nothing(world: World) -> None:
    hot, cold, new, junk = (world.publish(n, size=1000) for n in ("hot", "cold", "new", "junk"))
    world.hold_index("hot", "cold", "new", "junk")
    meta = f"{new.path}.metadata"
    world.limits = [2 * max(hot.size, new.size), 10**6]
    world.place(1, hot)
    world.place(0, cold)
    world.place(0, junk)
    leftover = temp_path_for(world.tiers[0] / hot.path)
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x")
    world.vote(hot.path, 9)
    world.vote(new.path, 8)
    world.vote(cold.path, 2)
    world.vote(meta, 2)
    world.vote(junk.path, 1)
    world.vote(hot.path, 1, when=NOW - 30 * DAY)  # old: the cleanup would drop it
    disk_before = {p: (s, t) for p, (s, t) in world.files_on_disk().items()}
    db_before = snapshot_db(world.db.location.sqlite_path)

    result = await world.run(dry_run=True)

    assert world.files_on_disk() == disk_before
    assert snapshot_db(world.db.location.sqlite_path) == db_before
    assert world.fake.requests_matching("/files/packages/", "GET") == []
    plan = result.plan
    assert plan is not None
    hot0, cold1 = plan.tiers
    assert (hot0.download_files, hot0.download_bytes) == (1, new.size)
    assert (hot0.move_in_files, hot0.move_out_files) == (1, 1)
    assert (hot0.delete_files, hot0.delete_bytes) == (1, junk.size)
    assert (cold1.move_in_files, cold1.download_files) == (1, 1)  # cold, and the metadata
    assert hot0.bytes_before == cold.size + junk.size
    assert hot0.bytes_after == hot.size + new.size
    text = "\n".join(format_plan(result))
    assert "download" in text and "move in" in text and "move out" in text
    assert "1 old votes" in text


async def test_stop_before_downloads_places_nothing(world: World) -> None:
    files = [world.publish(f"s{n}", size=100) for n in range(3)]
    world.hold_index(*(f"s{n}" for n in range(3)))
    world.limits = [10**6, 10**6]
    for file in files:
        world.vote(file.path, 2)
    stop = threading.Event()

    def on_phase(phase: str) -> None:
        if phase == "D":
            stop.set()

    result = await world.run(stop=stop, on_phase=on_phase)

    assert result.stopped
    assert world.files_on_disk() == {}
    world.assert_db_agrees_with_disk()


async def test_stop_during_a_download_leaves_no_partial_file(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = world.publish("big", size=3_000_000)
    assert big.size > 4 * downloader.CHUNK
    world.hold_index("big")
    world.limits = [10**8, 10**8]
    world.vote(big.path, 2)
    stop = threading.Event()
    chunks: list[int] = []
    original = Digest.hasher

    def hasher(self: Digest) -> Any:
        inner = original(self)

        class StopAfterFirstChunk:
            def update(self, data: bytes) -> None:
                chunks.append(len(data))
                stop.set()  # as SIGTERM would, in the middle of the body
                inner.update(data)

            def hexdigest(self) -> str:
                return inner.hexdigest()

        return StopAfterFirstChunk()

    monkeypatch.setattr(Digest, "hasher", hasher)
    result = await world.run(stop=stop)

    assert chunks, "the download never started"
    assert result.stopped
    assert result.downloaded_files == 0
    assert world.files_on_disk() == {}  # not the file, not its temporary
    world.assert_db_agrees_with_disk()


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "project"),
    [
        ("requests-2.32.0-py3-none-any.whl", "requests"),
        ("requests-2.32.0-py3-none-any.whl.metadata", "requests"),
        ("zope.interface-5.0.tar.gz", "zope-interface"),
        ("Flask_Login-0.6.3.tar.gz", "flask-login"),
        ("zope.interface-3.5.0-py2.5-win32.egg", "zope-interface"),
        ("pyparsing-1.5.2.win32.exe", "pyparsing"),
        ("Werkzeug-0.1.zip", "werkzeug"),
        ("more-itertools-2.2.tar.gz", "more-itertools"),
    ],
)
def test_project_of_a_filename(filename: str, project: str) -> None:
    assert project_names(filename)[0] == project


def test_summary_lines() -> None:
    result = CacheResult(votes_in_window=200, votes_local=170, candidates=12)
    result.phase_seconds = {"A": 1.0, "B": 2.5}
    text = result.summary()
    assert "hit rate 85.0%" in text
    assert "phases A 1.0s, B 2.5s" in text


# -- through `pypi-mirror sync` --------------------------------------------------------------


def test_sync_runs_cache_management_after_the_index(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from pypi_mirror.sync_job import run_sync

    wanted = world.publish("wanted", size=300)
    ignored = world.publish("ignored", size=300)
    world.limits = [10**6, 10**6]
    world.vote(wanted.path, 3, when=time.time() - 60)  # `sync` runs on the real clock
    world.vote(ignored.path, 1, when=time.time() - 60)
    config = world.config

    assert run_sync(config, dry_run=True, progress_bar=False) == 0
    planned = capsys.readouterr().out
    assert "cache plan: 1 candidate files" in planned
    assert world.files_on_disk() == {}
    world.fake.clear_requests()  # the dry run had no index yet: it asked with HEAD

    assert run_sync(config, progress_bar=False) == 0
    summary = capsys.readouterr().out
    assert "downloaded 1 files" in summary
    assert "hit rate 75.0%" in summary
    assert world.where(wanted.path) == 0  # its size and hash came from the synced index
    assert world.where(ignored.path) is None
    assert world.fake.requests_matching(wanted.filename, "HEAD") == []
