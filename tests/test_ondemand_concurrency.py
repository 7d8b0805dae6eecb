"""On-demand fetches never deadlock: many names, colliding lock slots, one or more workers.

The on-demand index serialises fetches per lock slot (blake2b of the name, 256 slots) across
workers with a lock file. Names that share a slot used to block both threads of the executor
that also had to release the lock: three concurrent requests hung the worker for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pypi_mirror.config import Config
from pypi_mirror.db import Database
from pypi_mirror.index.store import save_project
from pypi_mirror.repo import Repo
from pypi_mirror.server.ondemand import LOCK_SLOTS, OnDemandIndex, lock_slot
from pypi_mirror.upstream import UpstreamUrls, make_session
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http


def slot_of(name: str) -> int:
    """The same slot function as OnDemandIndex's lock files."""
    return hashlib.blake2b(name.encode(), digest_size=2).digest()[0] % LOCK_SLOTS


def colliding_names(prefix: str, count: int) -> tuple[int, list[str]]:
    """``count`` project names that all fall in one lock slot, and that slot."""
    by_slot: dict[int, list[str]] = {}
    for i in range(100_000):
        name = f"{prefix}-{i}"
        names = by_slot.setdefault(slot_of(name), [])
        names.append(name)
        if len(names) == count:
            return slot_of(name), names
    raise AssertionError("no slot filled")  # pragma: no cover


def names_in_other_slots(prefix: str, count: int, avoid: int) -> list[str]:
    """``count`` names, each in its own slot, none in ``avoid``."""
    seen = {avoid}
    names = []
    for i in range(100_000):
        name = f"{prefix}-{i}"
        if slot_of(name) not in seen:
            seen.add(slot_of(name))
            names.append(name)
            if len(names) == count:
                return names
    raise AssertionError("not enough slots")  # pragma: no cover


SLOT, SAME_SLOT = colliding_names("slotmate", 12)
OTHER_SLOTS = names_in_other_slots("elsewhere", 6, SLOT)
# Absent upstream but in the busy slot: the 404 path under contention too.
MISSING = [n for n in (f"ghost-{i}" for i in range(100_000)) if slot_of(n) == SLOT][:2]


def test_names_really_collide() -> None:
    assert len(SAME_SLOT) == 12
    assert {slot_of(n) for n in SAME_SLOT + MISSING} == {SLOT}
    assert len({slot_of(n) for n in OTHER_SLOTS}) == len(OTHER_SLOTS)
    assert SLOT not in {slot_of(n) for n in OTHER_SLOTS}
    # The test's slot function is the server's.
    assert all(slot_of(n) == lock_slot(n) for n in SAME_SLOT + OTHER_SLOTS + MISSING)


def _publish(fake_pypi: FakePyPI) -> None:
    for name in SAME_SLOT + OTHER_SLOTS:
        fake_pypi.add_wheel(name, "1.0")
    # Long enough that fetches in one slot overlap, short enough for a serialised slot of 12.
    fake_pypi.delay("/json", 0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_on_demand_pages_all_complete(
    tmp_path: Path, fake_pypi: FakePyPI, workers: int
) -> None:
    _publish(fake_pypi)
    # Repeats of the colliding names, so some requests join an in-flight fetch.
    wanted = SAME_SLOT * 2 + OTHER_SLOTS + SAME_SLOT[:4] + MISSING
    wanted += SAME_SLOT[: 40 - len(wanted)]
    assert len(wanted) == 40
    mirror = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, workers=workers).start()
    try:

        def get(name: str) -> tuple[str, int, bytes]:
            reply = http(mirror.simple + f"{name}/", timeout=20)
            return name, reply.status, reply.body

        with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
            results = list(pool.map(get, wanted))
        for name, status, body in results:
            if name in MISSING:
                assert status == 404, name
                continue
            assert status == 200, (name, status, body[:200])
            assert f"Links for {name}<".encode() in body or name.encode() in body
            (file,) = fake_pypi.files(name)
            assert file.filename.encode() in body, name
        # Afterwards the worker still fetches: no slot was left locked.
        fake_pypi.add_wheel(f"{SAME_SLOT[0]}-late", "1.0")
        assert http(mirror.simple + f"{SAME_SLOT[0]}-late/", timeout=20).status == 200
    finally:
        started = time.monotonic()
        assert mirror.process is not None
        mirror.process.send_signal(signal.SIGTERM)
        try:
            mirror.process.wait(35)
        except Exception:
            mirror.process.kill()
            mirror.process.wait()
            raise
    assert time.monotonic() - started < 35
    assert mirror.process.returncode == 0, mirror.stderr()


# -- OnDemandIndex in one event loop -------------------------------------------------------


@pytest.fixture
async def index(tmp_path: Path, fake_pypi: FakePyPI) -> AsyncIterator[OnDemandIndex]:
    config = Config.model_validate(
        {
            "repo_path": str(tmp_path / "repo"),
            "upstream": {"pypi_url": fake_pypi.url, "packages_url": fake_pypi.files_url},
            "timeouts": {"upstream": "5s"},
        }
    )
    repo = Repo(config)
    repo.create_folders()
    Database.in_repo(config.repo_path)  # creates the schema, as `serve` does at startup
    session = make_session(config)
    ondemand = OnDemandIndex(config, repo, UpstreamUrls(config), lambda: session)
    try:
        yield ondemand
    finally:
        ondemand.close()
        await session.close()


def _hold_slot(index: OnDemandIndex, slot: int) -> int:
    """Take a slot's lock as another worker would (a separate open file description)."""
    fd = os.open(
        index._config.repo_path / ".locks" / f"project-{slot:03d}.lock",
        os.O_RDWR | os.O_CREAT,
        0o644,
    )
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


async def test_ensure_many_colliding_names_in_one_loop(
    index: OnDemandIndex, fake_pypi: FakePyPI
) -> None:
    _publish(fake_pypi)
    names = SAME_SLOT * 3 + OTHER_SLOTS + MISSING
    results = await asyncio.wait_for(asyncio.gather(*(index.ensure(n) for n in names)), 20)
    assert results == [n not in MISSING for n in names]
    assert index.fetches == len(SAME_SLOT) + len(OTHER_SLOTS)
    # Every name fetched once: the in-worker dedup still holds.
    for name in SAME_SLOT:
        assert len(fake_pypi.requests_matching(f"/pypi/{name}/json")) == 1


async def test_waiting_for_another_worker_keeps_the_loop_free(
    index: OnDemandIndex, fake_pypi: FakePyPI
) -> None:
    _publish(fake_pypi)
    fd = _hold_slot(index, SLOT)
    try:
        # More waiters than the worker has threads: none of them may occupy one.
        blocked = asyncio.gather(*(index.ensure(n) for n in SAME_SLOT[:4]))
        await asyncio.sleep(0.2)
        # Other slots are fetched and saved while one slot waits for the other worker.
        assert await asyncio.wait_for(index.ensure(OTHER_SLOTS[0]), 5) is True
        await asyncio.sleep(0.3)
        assert not blocked.done()
    finally:
        os.close(fd)  # the other worker is done
    assert await asyncio.wait_for(blocked, 10) == [True] * 4


async def test_page_written_by_another_worker_is_not_fetched_again(
    index: OnDemandIndex, fake_pypi: FakePyPI
) -> None:
    _publish(fake_pypi)
    repo = index._repo
    name = SAME_SLOT[0]
    fd = _hold_slot(index, SLOT)
    try:
        waiting = asyncio.ensure_future(index.ensure(name))
        await asyncio.sleep(0.2)
        # The "other worker" fetches and saves the page while it holds the lock.
        body = urllib.request.urlopen(f"{fake_pypi.url}/pypi/{name}/json", timeout=5).read()
        save_project(repo, Database.in_repo(repo.root), body, on_demand=True)
    finally:
        os.close(fd)
    assert await asyncio.wait_for(waiting, 5) is True
    assert len(fake_pypi.requests_matching(f"/pypi/{name}/json")) == 1
    assert index.fetches == 0


async def test_close_does_not_hang_while_a_fetch_waits(
    index: OnDemandIndex, fake_pypi: FakePyPI
) -> None:
    _publish(fake_pypi)
    fd = _hold_slot(index, SLOT)
    try:
        waiting = asyncio.ensure_future(index.ensure(SAME_SLOT[0]))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        index.close()
        assert time.monotonic() - started < 2
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 5)
    finally:
        os.close(fd)


async def test_slot_of_another_worker_that_never_lets_go(
    index: OnDemandIndex, fake_pypi: FakePyPI
) -> None:
    """A wedged worker (stopped, stuck on its disk) delays a slot, it does not block it."""
    _publish(fake_pypi)
    index._lock_patience = 0.5
    fd = _hold_slot(index, SLOT)
    try:
        assert await asyncio.wait_for(index.ensure(SAME_SLOT[0]), 5) is True
    finally:
        os.close(fd)
