"""Phase E, cleanup: old votes, old remote sizes, rows of files no longer on disk, orphan
paths."""

from __future__ import annotations

from pypi_mirror.cache.report import CacheResult
from pypi_mirror.config import Config
from pypi_mirror.db import Database

# How long the last batch of a vote writer that stopped is remembered (a running writer
# refreshes its row with every batch).
VOTE_WRITER_MEMORY = 86_400.0


def cleanup(
    config: Config, db: Database, stale: list[str], result: CacheResult, *, now: float
) -> None:
    """``stale``: rows of local_sizes whose file is on no tier (and was not placed since)."""
    result.votes_dropped = db.delete_votes_before(now - config.cache.vote_window)
    # A mark inside the dedup window still suppresses duplicates: kept at least that long.
    db.delete_vote_marks_before(now - max(config.cache.vote_window, config.cache.dedup_window))
    db.delete_vote_writers_before(now - VOTE_WRITER_MEMORY)
    result.remote_sizes_dropped = db.delete_remote_sizes_before(now - config.cache.size_db_ttl)
    if stale:
        db.delete_local_files(stale)
    result.local_rows_dropped = len(stale)
    result.files_dropped = db.delete_unreferenced_files()
