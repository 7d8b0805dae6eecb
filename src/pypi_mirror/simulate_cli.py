"""``pypi-mirror simulate``: read the logs, replay them per budget × policy, print the table."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from pypi_mirror.cache.logread import Download, open_log, read_downloads
from pypi_mirror.cache.simulate import (
    Requests,
    Run,
    Settings,
    load_requests,
    simulate,
    sizes_from_database,
)
from pypi_mirror.config import Config
from pypi_mirror.progress import Progress

GIB = 1 << 30


def _downloads(logs: Sequence[Path], prefix: str, bad: list[int]) -> Iterator[Download]:
    total = sum(path.stat().st_size for path in logs)
    with Progress("reading logs", total=total, unit="bytes") as progress:
        for path in logs:
            lines, raw = open_log(path)
            with raw, lines:
                seen = 0
                for count, download in enumerate(read_downloads(iter(lines), prefix, bad=bad)):
                    yield download
                    if count % 16384 == 0:
                        position = raw.tell()
                        progress.advance(position - seen)
                        seen = position
                progress.advance(path.stat().st_size - seen)


def tier_limits(config: Config) -> tuple[int, ...]:
    if config.cache.tiers:
        return tuple(tier.size_limit for tier in config.cache.tiers)
    return (config.cache.size_limit,)


def run_simulation(
    config: Config,
    logs: Sequence[Path],
    *,
    budgets: Sequence[tuple[int, ...]],
    policies: Sequence[str],
    sync_every: float,
    warmup: float,
) -> tuple[Requests, list[Run], dict[str, float]]:
    """Load once, replay every budget × policy; returns the requests, the runs and timings."""
    cache = config.cache
    clock = time.perf_counter()
    bad = [0]
    requests = load_requests(
        _downloads(logs, config.prefix, bad),
        dedup_window=cache.dedup_window,
        known_sizes=sizes_from_database(config.store),
    )
    requests.bad_lines = bad[0]
    loaded = time.perf_counter()
    runs = [Run(limits, policy) for policy in policies for limits in budgets]
    settings = Settings(cache.vote_window, cache.min_vote_count, cache.filesize_limit, 0, 0)
    settings.sync_every, settings.warmup = sync_every, warmup
    steps = (
        max(int((requests.times[-1] - requests.times[0]) // sync_every) + 1, 1)
        if (len(requests))
        else 1
    )
    with Progress("replaying", total=steps, unit="syncs") as progress:
        shared = simulate(requests, runs, settings, lambda _done, _total: progress.advance())
    timings = {"load": loaded - clock, "shared": shared, "total": time.perf_counter() - clock}
    return requests, runs, timings


def human_size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def table(requests: Requests, runs: Sequence[Run], timings: dict[str, float]) -> str:
    days = (requests.times[-1] - requests.times[0]) / 86400 if len(requests) else 0.0
    lines = [
        f"{len(requests):,} downloads over {days:.1f} days, {len(requests.paths):,} files, "
        f"{requests.prefix_count:,} prefixes; {requests.bot_requests:,} bot requests (no vote), "
        f"{requests.duplicate_votes:,} duplicate votes (dedup_window), "
        f"{int(sum(requests.voted)):,} votes counted",
    ]
    if requests.skipped_requests or requests.bad_lines:
        lines.append(
            f"skipped: {requests.skipped_requests:,} requests for {requests.skipped_files:,} "
            f"files of unknown size; {requests.bad_lines:,} unreadable lines"
        )
    if runs and not runs[0].measured.requests:
        lines.append("the warm-up covers the whole log: no rates (try a shorter --warmup)")
    lines += [
        "",
        "| budget | policy | request hit | byte hit | vote hit | downloaded/day "
        "| warm-up: request hit | warm-up downloaded | run time |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        measured, warm = run.measured, run.warmup
        budget = " + ".join(human_size(limit) for limit in run.limits)
        lines.append(
            f"| {budget} | {run.policy} | {measured.request_hit:.1%} | {measured.byte_hit:.1%} "
            f"| {measured.vote_hit:.1%} | {human_size(measured.downloaded_per_day)} "
            f"| {warm.request_hit:.1%} | {human_size(warm.downloaded)} "
            f"| {run.cpu_seconds:.1f} s |"
        )
    lines.append(
        f"\nreading {timings['load']:.1f} s, vote window and ranking (shared by the runs) "
        f"{timings['shared']:.1f} s, total {timings['total']:.1f} s"
    )
    return "\n".join(lines)


def rows(runs: Sequence[Run]) -> list[dict[str, object]]:
    return [
        {
            "budget": run.budget,
            "policy": run.policy,
            "request_hit": run.measured.request_hit,
            "byte_hit": run.measured.byte_hit,
            "vote_hit": run.measured.vote_hit,
            "downloaded_per_day": run.measured.downloaded_per_day,
            "tiers": list(run.limits),
            "requests": run.measured.requests,
            "warmup_request_hit": run.warmup.request_hit,
            "warmup_downloaded": run.warmup.downloaded,
            "seconds": run.cpu_seconds,
        }
        for run in runs
    ]


def write_json(path: Path, runs: Sequence[Run]) -> None:
    path.write_bytes(orjson.dumps({"rows": rows(runs)}, option=orjson.OPT_INDENT_2) + b"\n")
