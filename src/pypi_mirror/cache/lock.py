"""The cache lock: the one the cache manager (phases A–E of `sync`) holds, also taken by
`cache purge` and `cache prewarm`, so that none of them plans with a picture of the tiers that
another is changing. Waiting is bounded: an operator gets a clear answer, not a hang."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pypi_mirror.config import Config
from pypi_mirror.db import locks as store_locks
from pypi_mirror.repo import Repo


@contextmanager
def cache_lock(config: Config, repo: Repo, wait: float, role: str) -> Iterator[bool]:
    """Hold the cache lock for the block; False when it stayed taken for ``wait`` seconds."""
    with store_locks.exclusive(config.store, repo.root, store_locks.CACHE, role, wait) as lock:
        yield lock.held
