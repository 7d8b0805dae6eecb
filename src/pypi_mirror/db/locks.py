"""Named locks that one process at a time may hold: for the whole of `sync`, and for the
cache (phases A–E, `cache purge`, `cache prewarm`).

On the embedded SQLite store every process is on one host: an ``flock`` on a file in the
repository. On PostgreSQL the processes may be on any host: a session-level advisory lock,
held by a connection of its own for as long as the block runs and released by the server
when that connection ends, however the process ends. A refused caller is told who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pypi_mirror.db.connection import LOCK_NAMESPACE, application_name, pg_connect
from pypi_mirror.db.location import StoreLocation

POLL = 0.2


@dataclass(frozen=True)
class NamedLock:
    key: int  # the PostgreSQL advisory lock's second key (1 is connection.MIGRATION_LOCK)
    filename: str  # the SQLite store's lock file, in the repository


SYNC = NamedLock(2, ".index.lock")
CACHE = NamedLock(3, ".cache.lock")


@dataclass
class Held:
    held: bool
    holder: str = ""  # who holds it, when not held
    _alive: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    def still_held(self) -> bool:
        """False once the lock is gone (PostgreSQL: its connection died, and the server
        released it). Safe to call from another thread."""
        return self.held and (self._alive is None or self._alive())


@contextmanager
def exclusive(
    store: StoreLocation, repo_root: Path, lock: NamedLock, role: str, wait: float = 0.0
) -> Iterator[Held]:
    """Hold ``lock`` for the block; ``Held(False, holder)`` when another process kept it for
    ``wait`` seconds (0: one try)."""
    if store.is_postgresql:
        with _advisory(store, lock, role, wait) as held:
            yield held
    else:
        with _flock(repo_root / lock.filename, role, wait) as held:
            yield held


@contextmanager
def _flock(path: Path, role: str, wait: float) -> Iterator[Held]:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    # Unbuffered: a full disk shows at the write, where it is ignored, not at close.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
                    yield Held(False, holder or "another process on this host")
                    return
                time.sleep(POLL)
        # Who holds it, for the next one refused. Best effort: a full disk must not stop
        # the run that would report it.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{application_name(role)}\n".encode(), 0)
        try:
            yield Held(True)
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def _advisory(store: StoreLocation, lock: NamedLock, role: str, wait: float) -> Iterator[Held]:
    deadline = time.monotonic() + wait
    with pg_connect(store, role) as conn:
        while True:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, lock.key)
            ).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() >= deadline:
                yield Held(False, _holder(conn, lock))
                return
            time.sleep(POLL)

        def alive() -> bool:
            try:
                conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                return False

        try:
            yield Held(True, _alive=alive)
        finally:
            # A connection that died meanwhile took the lock with it: nothing to release,
            # and its error must not replace the block's own.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, lock.key))


def _holder(conn: psycopg.Connection[Any], lock: NamedLock) -> str:
    row = conn.execute(
        "SELECT a.application_name, host(a.client_addr), "
        "to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ') "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 2",
        (LOCK_NAMESPACE, lock.key),
    ).fetchone()
    if row is None:  # released in between
        return "another process (it has just released it)"
    name, address, since = row
    where = f" from {address}" if address else ""
    return f"{name or 'a client'}{where}, connected since {since}"
