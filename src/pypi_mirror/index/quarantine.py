"""The record of quarantined projects (PEP 792): ``{repo}/quarantined.json``, a small
``{name: [file path, …]}`` document written by `sync` and on-demand saves when a project's
status changes, read by `serve` to refuse those files even when they are cached.

Status changes are rare, so the file is only rewritten on one, under a cross-process lock
(several workers and `sync` may save at once); readers see it whole (atomic rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from pypi_mirror.names import metadata_path
from pypi_mirror.repo import atomic_write

FILENAME = "quarantined.json"


def record_path(repo_root: Path) -> Path:
    return repo_root / FILENAME


def load(repo_root: Path) -> dict[str, list[str]]:
    """The quarantined projects and their file paths ({} when none or unreadable)."""
    try:
        doc = orjson.loads(record_path(repo_root).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: [p for p in v if isinstance(p, str)] for k, v in doc.items() if isinstance(v, list)}


def refused_paths(record: dict[str, list[str]]) -> frozenset[str]:
    """Every file path of the record, with its PEP 658 metadata file."""
    return frozenset(q for paths in record.values() for p in paths for q in (p, metadata_path(p)))


@contextlib.contextmanager
def _locked(repo_root: Path) -> Iterator[None]:
    lock_dir = repo_root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "quarantine.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read and one small write
        yield
    finally:
        os.close(fd)


def update(repo_root: Path, name: str, paths: Iterable[str] | None) -> None:
    """Record ``name`` as quarantined with ``paths``, or (None) as not quarantined."""
    wanted = None if paths is None else sorted(set(paths))
    if load(repo_root).get(name) == wanted:
        return  # the common case: nothing changed, no lock taken
    with _locked(repo_root):
        record = load(repo_root)
        if wanted is None:
            if record.pop(name, None) is None:
                return
        else:
            record[name] = wanted
        atomic_write(record_path(repo_root), orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
