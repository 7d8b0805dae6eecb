"""The cache lock: the one the cache manager (phases A–E of `sync`) holds, also taken by
`cache purge` and `cache prewarm`, so that none of them plans with a picture of the tiers that
another is changing. Waiting is bounded: an operator gets a clear answer, not a hang."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pypi_mirror.cache.manager import LOCK_FILENAME
from pypi_mirror.repo import Repo

POLL = 0.2


@contextmanager
def cache_lock(repo: Repo, wait: float) -> Iterator[bool]:
    """Hold the cache lock for the block; False when it stayed taken for ``wait`` seconds."""
    repo.root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with open(repo.root / LOCK_FILENAME, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(POLL)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
