"""Keeping the root index current: rewrite it when the serials table changed since it was
last written, under a cross-process lock shared by every `serve` worker and `sync`.

The signature of the table the root was written from is kept in the settings table, so a
restart, another worker or `sync` all know whether the root on disk is current.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from pypi_mirror.db import Database
from pypi_mirror.index.root import GLOBAL_SERIAL_KEY, write_root_index
from pypi_mirror.repo import Repo

ROOT_SIGNATURE_KEY = "root_signature"  # settings key: serials_signature() the root lists


@contextlib.contextmanager
def root_lock(repo: Repo, *, blocking: bool) -> Iterator[bool]:
    """Hold ``{repo}/.locks/root.lock``; yields False (not held) when ``blocking`` is off and
    another process writes the root right now."""
    lock_dir = repo.root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "root.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def write_root_recorded(repo: Repo, db: Database, global_serial: int) -> None:
    """``write_root_index`` and remember the table it listed (the caller holds the lock).
    The signature is taken before the write: a project saved meanwhile makes it differ,
    so the next round lists that project too."""
    signature = db.serials_signature()
    write_root_index(repo, db, global_serial)
    db.set_setting(ROOT_SIGNATURE_KEY, signature)


def held_global_serial(db: Database) -> int:
    """The serial `/simple/` claims: the last complete sync's, or a higher project serial
    fetched on demand since (never behind a project page the mirror serves)."""
    stored = db.get_setting(GLOBAL_SERIAL_KEY)
    synced = int(stored) if stored and stored.isdigit() else 0
    return max(synced, db.max_serial())


def refresh_root_index(repo: Repo, db: Database, *, force: bool = False) -> bool:
    """Rewrite the root index if the serials table changed since it was written (or it is
    missing, or ``force``). Never waits: when another process holds the lock, it is that
    process's write, and the next round looks again. True when written."""
    with root_lock(repo, blocking=False) as held:
        if not held:
            return False
        missing = not (repo.root_html.exists() and repo.root_json.exists())
        current = db.get_setting(ROOT_SIGNATURE_KEY) == db.serials_signature()
        if current and not missing and not force:
            return False
        write_root_recorded(repo, db, held_global_serial(db))
        return True
