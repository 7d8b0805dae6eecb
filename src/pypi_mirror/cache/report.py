"""What cache management did, and how it is told: the result of a run, its summary, the dry
run's plan per tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pypi_mirror.cache.plan import Plan
from pypi_mirror.progress import format_duration

MAX_LISTED = 20  # failures named in the result; the rest are counted


@dataclass
class TierState:
    index: int
    path: Path
    limit: int
    files: int = 0
    bytes: int = 0


@dataclass
class CacheResult:
    """What cache management did (or, in a dry run, would do)."""

    dry_run: bool = False
    tiers: list[TierState] = field(default_factory=list)
    plan: Plan | None = field(default=None, repr=False)
    candidates: int = 0
    votes_in_window: int = 0
    votes_local: int = 0
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    moved_files: int = 0
    moved_bytes: int = 0
    deleted_files: int = 0
    deleted_bytes: int = 0
    gone: int = 0  # 404 upstream: not an error, the file no longer exists
    skipped: int = 0  # not done this run: no room after an earlier step failed, no hash known
    download_errors: int = 0
    size_errors: int = 0  # voted files whose size the upstream would not tell (HEAD failed)
    head_requests: int = 0
    stat_calls: int = 0
    temp_removed: int = 0
    invalid_paths: int = 0
    votes_dropped: int = 0
    remote_sizes_dropped: int = 0
    local_rows_dropped: int = 0
    files_dropped: int = 0
    stopped: bool = False
    # What went wrong, for the summary: the first MAX_LISTED failed files (see fail()), and
    # whatever stopped the run or a part of it. Not empty means the run failed.
    failures: list[str] = field(default_factory=list)
    failed: int = 0  # files whose download, size check, move or deletion failed
    notes: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        """Count a failed file (the run then exits non-zero); the first few are named."""
        self.failed += 1
        if len(self.failures) < MAX_LISTED:
            self.failures.append(message)

    @property
    def hit_rate(self) -> float:
        """Share of the window's votes whose file is local now."""
        return self.votes_local / self.votes_in_window if self.votes_in_window else 0.0

    def summary(self) -> str:
        return "\n".join(format_summary(self))


def format_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_summary(result: CacheResult) -> list[str]:
    lines = [
        f"cache: {result.candidates:,} candidate files from {result.votes_in_window:,} votes in "
        f"the window; hit rate {result.hit_rate:.1%} (votes whose file is local)",
        f"cache: downloaded {result.downloaded_files:,} files "
        f"({format_size(result.downloaded_bytes)}), moved {result.moved_files:,} "
        f"({format_size(result.moved_bytes)}), deleted {result.deleted_files:,} "
        f"({format_size(result.deleted_bytes)}); {result.gone:,} gone upstream, "
        f"{result.download_errors:,} download errors, {result.skipped:,} skipped",
    ]
    if result.failed:
        others = result.failed - result.download_errors - result.size_errors
        lines.append(
            f"cache: {result.failed:,} files failed: {result.download_errors:,} downloads, "
            f"{result.size_errors:,} size checks, {others:,} moves or deletions"
        )
    for tier in result.tiers:
        share = f" ({tier.bytes / tier.limit:.0%})" if tier.limit else ""
        lines.append(
            f"cache tier {tier.index} {tier.path}: {tier.files:,} files, "
            f"{format_size(tier.bytes)} of {format_size(tier.limit)}{share}"
        )
    if result.temp_removed or result.invalid_paths:
        lines.append(
            f"cache: {result.temp_removed:,} leftover temporary files removed, "
            f"{result.invalid_paths:,} unexpected files ignored"
        )
    if result.votes_dropped or result.remote_sizes_dropped or result.local_rows_dropped:
        lines.append(
            f"cache: cleanup dropped {result.votes_dropped:,} old votes, "
            f"{result.remote_sizes_dropped:,} old remote sizes and "
            f"{result.local_rows_dropped:,} rows of files no longer on disk"
        )
    if result.phase_seconds:
        timings = ", ".join(
            f"{phase} {format_duration(seconds)}" for phase, seconds in result.phase_seconds.items()
        )
        lines.append(f"cache: phases {timings}")
    lines.extend(f"cache: note: {note}" for note in result.notes)
    if result.stopped:
        lines.append("cache: stopped before the end (signal)")
    return lines


def format_plan(result: CacheResult) -> list[str]:
    """The dry run's plan, per tier."""
    lines = [
        f"cache plan: {result.candidates:,} candidate files from {result.votes_in_window:,} "
        f"votes in the window"
    ]
    if result.plan is None:
        return [*lines, "cache plan: nothing to do", *result.notes]
    for state, change in zip(result.tiers, result.plan.tiers, strict=True):
        lines.append(
            f"tier {state.index} {state.path} (limit {format_size(change.limit)}): "
            f"{change.files_before:,} files, {format_size(change.bytes_before)} now -> "
            f"{change.files_after:,} files, {format_size(change.bytes_after)} after"
        )
        for label, files, size in (
            ("download", change.download_files, change.download_bytes),
            ("move in", change.move_in_files, change.move_in_bytes),
            ("move out", change.move_out_files, change.move_out_bytes),
            ("delete", change.delete_files, change.delete_bytes),
        ):
            lines.append(f"  {label:<9} {files:>10,} files {format_size(size):>12}")
    if result.plan.cycle_breaks:
        lines.append(
            f"cache plan: {result.plan.cycle_breaks:,} swaps between full tiers are done by "
            "deleting and downloading again"
        )
    lines.append(
        f"cache plan: cleanup would drop {result.votes_dropped:,} old votes and "
        f"{result.remote_sizes_dropped:,} old remote sizes"
    )
    lines.extend(f"cache plan: note: {note}" for note in result.notes)
    return lines
