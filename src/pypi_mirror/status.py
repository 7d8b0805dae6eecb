"""What the mirror can say about itself, from its database and config: index freshness, tier
usage, hourly traffic, the most-voted projects and the runs of `sync`. One source for the
status page, ``/metrics``' database facts and ``pypi-mirror status``.

`sync` records each run here (``record_sync_run``) with the counts of its summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from pypi_mirror.cache.report import format_size
from pypi_mirror.config import Config
from pypi_mirror.db import Database
from pypi_mirror.index.root import GLOBAL_SERIAL_KEY
from pypi_mirror.names import dist_filename_of, project_of
from pypi_mirror.progress import format_duration
from pypi_mirror.repo import tiers_of
from pypi_mirror.traffic import HOUR, HourTraffic, hour_of, hourly, total

if TYPE_CHECKING:
    from pypi_mirror.cache.report import CacheResult
    from pypi_mirror.index.sync import IndexSyncResult

log = logging.getLogger(__name__)

TOP_PROJECTS = 20
RECENT_RUNS = 10
TRAFFIC_KEPT = 90 * 86400  # hourly rows older than this are dropped
MAX_FAILURES_KEPT = 5  # failure messages recorded per sync run


@dataclass
class TierUsage:
    index: int
    path: str
    files: int
    bytes: int
    limit: int

    @property
    def share(self) -> float:
        return self.bytes / self.limit if self.limit else 0.0


@dataclass
class SyncRun:
    started: float
    finished: float
    result: str  # "ok", "failed" or "interrupted"
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def project_counts(self) -> dict[str, int]:
        return {k: int(self.summary.get(f"projects_{k}", 0)) for k in _PROJECT_KINDS}

    def file_counts(self) -> dict[str, int]:
        return {k: int(self.summary.get(f"files_{k}", 0)) for k in _FILE_KINDS}

    def byte_counts(self) -> dict[str, int]:
        return {k: int(self.summary.get(f"bytes_{k}", 0)) for k in _BYTE_KINDS}


_PROJECT_KINDS = ("new", "updated", "removed", "failed", "skipped")
_FILE_KINDS = ("downloaded", "moved", "deleted", "failed")
_BYTE_KINDS = ("downloaded", "moved", "deleted")


@dataclass
class Facts:
    """The cheap facts (a few small queries): what /metrics adds at scrape time."""

    now: float
    serial: int | None
    tiers: list[TierUsage]
    last_run: SyncRun | None
    last_success: SyncRun | None

    @property
    def sync_age(self) -> float | None:
        """Seconds since the last successful sync ended."""
        return None if self.last_success is None else self.now - self.last_success.finished


@dataclass
class Status:
    """Everything the status page shows."""

    facts: Facts
    window: float  # seconds of traffic shown (the vote window)
    hours: list[HourTraffic]
    top_projects: list[tuple[str, int]]
    runs: list[SyncRun]

    @property
    def totals(self) -> HourTraffic:
        return total(self.hours)


def _run(row: tuple[float, float, str, str] | None) -> SyncRun | None:
    if row is None:
        return None
    started, finished, result, summary = row
    try:
        counts = orjson.loads(summary)
    except orjson.JSONDecodeError:
        counts = {}
    return SyncRun(float(started), float(finished), str(result), counts)


def read_facts(config: Config, db: Database, now: float | None = None) -> Facts:
    now = time.time() if now is None else now
    usage = {tier: (files, size) for tier, files, size in db.local_usage()}
    tiers = [
        TierUsage(tier.index, str(tier.path), *usage.get(tier.index, (0, 0)), tier.size_limit)
        for tier in tiers_of(config)
    ]
    stored = db.get_setting(GLOBAL_SERIAL_KEY)
    serial = int(stored) if stored and stored.isdigit() else None
    return Facts(
        now=now,
        serial=serial,
        tiers=tiers,
        last_run=_run(next(iter(db.sync_runs(1)), None)),
        last_success=_run(db.last_sync_run("ok")),
    )


def most_voted_projects(
    db: Database, since: float, limit: int = TOP_PROJECTS
) -> list[tuple[str, int]]:
    """Projects by votes since ``since`` (from the most-voted files: a project whose votes
    are spread over very many files may rank a little low)."""
    votes: dict[str, int] = {}
    for path, count in db.most_voted_files(since, limit * 25):
        name = project_of(dist_filename_of(path)) or dist_filename_of(path)
        votes[name] = votes.get(name, 0) + int(count)
    return sorted(votes.items(), key=lambda item: (-item[1], item[0]))[:limit]


def read_status(
    config: Config,
    db: Database,
    now: float | None = None,
    *,
    facts: Facts | None = None,
    top: list[tuple[str, int]] | None = None,
) -> Status:
    """The whole status; ``facts`` and ``top`` when the caller has them already (cached)."""
    now = time.time() if now is None else now
    window = config.cache.vote_window
    last_hour = hour_of(now)
    first_hour = hour_of(now - window) + HOUR if window >= HOUR else last_hour
    rows = db.traffic_since(first_hour)
    return Status(
        facts=facts or read_facts(config, db, now),
        window=window,
        hours=hourly(rows, first_hour, last_hour),
        top_projects=top if top is not None else most_voted_projects(db, now - window),
        runs=[run for row in db.sync_runs(RECENT_RUNS) if (run := _run(row)) is not None],
    )


def status_json(status: Status) -> dict[str, Any]:
    """The status as the page's JSON form gives it."""
    facts = status.facts
    totals = status.totals

    def hour(entry: HourTraffic) -> dict[str, Any]:
        return {
            **asdict(entry),
            "hit_rate": entry.hit_rate,
            "byte_hit_rate": entry.byte_hit_rate,
        }

    return {
        "time": facts.now,
        "index": {
            "serial": facts.serial,
            "last_sync": None if facts.last_run is None else asdict(facts.last_run),
            "last_successful_sync": (
                None if facts.last_success is None else asdict(facts.last_success)
            ),
            "sync_age_seconds": facts.sync_age,
        },
        "tiers": [{**asdict(tier), "share": tier.share} for tier in facts.tiers],
        "traffic": {
            "window_seconds": status.window,
            "requests": totals.requests,
            "bytes": totals.bytes,
            "file_hits": totals.hits,
            "file_misses": totals.misses,
            "hit_bytes": totals.hit_bytes,
            "miss_bytes": totals.miss_bytes,
            "hit_rate": totals.hit_rate,
            "byte_hit_rate": totals.byte_hit_rate,
            "hours": [hour(entry) for entry in status.hours],
        },
        "most_voted": [{"project": name, "votes": votes} for name, votes in status.top_projects],
        "sync_runs": [asdict(run) for run in status.runs],
    }


# -- recording a sync run -------------------------------------------------------------------


def sync_summary(
    index: IndexSyncResult | None, cache: CacheResult | None, failures: list[str]
) -> dict[str, Any]:
    """The counts of a run, as its summary prints them."""
    summary: dict[str, Any] = {}
    if index is not None:
        summary.update(
            projects_new=index.new,
            projects_updated=index.updated,
            projects_removed=index.removed,
            projects_failed=index.failed_count,
            projects_skipped=index.skipped,
            index_seconds=round(index.seconds, 3),
        )
    if cache is not None:
        summary.update(
            files_downloaded=cache.downloaded_files,
            bytes_downloaded=cache.downloaded_bytes,
            files_moved=cache.moved_files,
            bytes_moved=cache.moved_bytes,
            files_deleted=cache.deleted_files,
            bytes_deleted=cache.deleted_bytes,
            files_failed=cache.failed,
            votes_in_window=cache.votes_in_window,
            cache_hit_rate=round(cache.hit_rate, 4),
        )
    if failures:
        summary["failures"] = failures[:MAX_FAILURES_KEPT]
    return summary


def record_sync_run(
    db: Database,
    started: float,
    index: IndexSyncResult | None,
    cache: CacheResult | None,
    failures: list[str],
    interrupted: bool,
) -> None:
    """Store a finished run; never raises (the run's own outcome matters more)."""
    if interrupted:
        result = "interrupted"
    elif failures or index is None:
        result = "failed"
    else:
        result = "ok"
    summary = sync_summary(index, cache, failures)
    try:
        db.add_sync_run(started, time.time(), result, orjson.dumps(summary).decode())
    except Exception as error:
        log.warning("could not record this sync run in the database: %s", error)


def prune_traffic(db: Database, now: float | None = None) -> None:
    """Drop hourly rows older than TRAFFIC_KEPT."""
    now = time.time() if now is None else now
    db.delete_traffic_before(hour_of(now - TRAFFIC_KEPT))


# -- words for people (the status page and `pypi-mirror status`) -----------------------------


def format_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{format_duration(max(seconds, 0.0))} ago"


def format_share(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def describe_run(run: SyncRun) -> str:
    """One line of a run's counts."""
    counts = run.summary
    parts = []
    if "projects_new" in counts:
        projects = run.project_counts()
        parts.append(
            f"projects {projects['new']:,} new, {projects['updated']:,} updated, "
            f"{projects['removed']:,} removed, {projects['failed']:,} failed"
        )
    if "files_downloaded" in counts:
        files, sizes = run.file_counts(), run.byte_counts()
        parts.append(
            f"files {files['downloaded']:,} downloaded ({format_size(sizes['downloaded'])}), "
            f"{files['moved']:,} moved, {files['deleted']:,} deleted, {files['failed']:,} failed"
        )
    failures = counts.get("failures") or []
    if failures:
        parts.append("; ".join(str(failure) for failure in failures))
    return "; ".join(parts) or "no counts"
