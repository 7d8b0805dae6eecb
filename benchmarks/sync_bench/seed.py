"""A mirror database that already knows every project except the ones to fetch."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pypi_mirror.db import Database
from sync_bench.names import is_fetched, normalized_name, serial_of


def seed(repo: Path, projects: int, every: int) -> int:
    """Serial rows for every project not fetched; returns how many are left to fetch."""
    repo.mkdir(parents=True, exist_ok=True)
    db = Database.in_repo(repo)
    missing = 0
    with db.transaction():
        for i in range(projects):
            if is_fetched(i, every):
                missing += 1
                continue
            db.set_serial(normalized_name(i), serial_of(i), now=0.0)
    db.close()
    return missing
