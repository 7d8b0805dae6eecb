"""cache.policy × budget on the shared trace (``../shared/trace/trace-7d.jsonl.xz``).

The budgets are 1 %, 5 %, 10 % and 25 % of the trace's working set (the sizes of its distinct
files added up). The trace is read once into integer arrays; each policy × budget is then
replayed on its own (``pypi-mirror simulate``'s code: the real vote rules, plan.py's scorers
and ``assign_sizes``, one plan per ``--sync-every`` of trace time), so each row's time is
what one ``simulate`` run of one policy and budget costs after the reading.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from pypi_mirror.cache.logread import open_log, read_downloads
from pypi_mirror.cache.plan import SCORERS
from pypi_mirror.cache.simulate import Requests, Run, Settings, load_requests, simulate
from pypi_mirror.config import CacheConfig, parse_duration
from pypi_mirror.simulate_cli import human_size

HERE = Path(__file__).resolve().parent
TRACE = HERE.parent.parent.parent / "shared" / "trace" / "trace-7d.jsonl.xz"
SHARES = (0.01, 0.05, 0.10, 0.25)
GOAL_SECONDS = 60.0  # per policy and budget, for about a million requests


def load(trace: Path, dedup_window: float) -> Requests:
    lines, raw = open_log(trace)
    with raw, lines:
        return load_requests(read_downloads(iter(lines), "/pypi"), dedup_window=dedup_window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--sync-every", default="1h")
    parser.add_argument("--warmup", default="1d")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    cache = CacheConfig()

    clock = time.perf_counter()
    requests = load(args.trace, cache.dedup_window)
    read_seconds = time.perf_counter() - clock
    working_set = sum(requests.sizes)
    days = (requests.times[-1] - requests.times[0]) / 86400
    print(
        f"{args.trace.name}: {len(requests):,} requests over {days:.1f} days, "
        f"{len(requests.paths):,} files, working set {human_size(working_set)}; "
        f"{requests.bot_requests:,} bot requests, {requests.duplicate_votes:,} duplicate votes, "
        f"{sum(requests.voted):,} votes; read in {read_seconds:.1f} s"
    )
    print(
        f"defaults: vote_window {cache.vote_window / 86400:g}d, min_vote_count "
        f"{cache.min_vote_count}, dedup_window {cache.dedup_window:g}s; sync every "
        f"{args.sync_every}, warm-up {args.warmup} (left out of the rates)\n"
    )
    settings = Settings(
        cache.vote_window,
        cache.min_vote_count,
        cache.filesize_limit,
        parse_duration(args.sync_every),
        parse_duration(args.warmup),
    )
    print(
        "| budget | share | policy | request hit | byte hit | vote hit | downloaded/day "
        "| run time |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    rows = []
    slowest = 0.0
    for share in SHARES:
        budget = int(working_set * share)
        for policy in SCORERS:
            run = Run((budget,), policy)
            clock = time.perf_counter()
            simulate(requests, [run], settings)
            seconds = time.perf_counter() - clock
            slowest = max(slowest, seconds)
            tally = run.measured
            print(
                f"| {human_size(budget)} | {share:.0%} | {policy} | {tally.request_hit:.1%} "
                f"| {tally.byte_hit:.1%} | {tally.vote_hit:.1%} "
                f"| {human_size(tally.downloaded_per_day)} | {seconds:.1f} s |",
                flush=True,
            )
            rows.append(
                {
                    "budget": budget,
                    "share": share,
                    "policy": policy,
                    "request_hit": tally.request_hit,
                    "byte_hit": tally.byte_hit,
                    "vote_hit": tally.vote_hit,
                    "downloaded_per_day": tally.downloaded_per_day,
                    "seconds": seconds,
                }
            )
    verdict = "ok" if slowest < GOAL_SECONDS else "SLOW"
    print(f"\nslowest run {slowest:.1f} s (goal: < {GOAL_SECONDS:.0f} s per run): {verdict}")
    if args.json:
        args.json.write_bytes(orjson.dumps({"rows": rows}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
