"""Refusing the files of quarantined projects (PEP 792) even when they are cached: the paths
recorded in ``{repo}/quarantined.json`` (index/quarantine.py), reloaded when the file's mtime
changes (looked at no more than once a second). One set lookup per file request.

Projects denied by ``filters.deny_projects`` are refused here too, as quarantined ones are:
one refusal, whatever the reason."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pypi_mirror.filters import Filters
from pypi_mirror.index.quarantine import load, record_path, refused_paths

CHECK_INTERVAL = 1.0  # seconds between looks at the record's mtime


class _Record:
    def __init__(self, repo_root: Path) -> None:
        self.root = repo_root
        self.path = record_path(repo_root)
        self.mtime_ns = -1
        self.next_check = 0.0
        self.paths: frozenset[str] = frozenset()

    def current(self) -> frozenset[str]:
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + CHECK_INTERVAL
            try:
                mtime_ns = os.stat(self.path).st_mtime_ns
            except OSError:
                mtime_ns = 0
            if mtime_ns != self.mtime_ns:
                self.mtime_ns = mtime_ns
                self.paths = refused_paths(load(self.root)) if mtime_ns else frozenset()
        return self.paths


_records: dict[Path, _Record] = {}


def is_quarantined(repo_root: Path, path: str) -> bool:
    """Whether ``path`` (after ``/packages/``) belongs to a quarantined project."""
    record = _records.get(repo_root)
    if record is None:
        record = _records[repo_root] = _Record(repo_root)
    paths = record.current()
    return bool(paths) and path in paths


def refusal(repo_root: Path, path: str, filters: Filters) -> str | None:
    """Why ``path`` is refused (quarantined or denied project), or None when it is not."""
    if is_quarantined(repo_root, path):
        return "the project is quarantined"
    if filters.path_denied(path):
        return "the project is not served by this mirror"
    return None
