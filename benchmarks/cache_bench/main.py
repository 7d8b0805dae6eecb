"""Benchmark of cache management (phases A–E): time and peak memory of each phase.

10,000,000 votes over 500,000 files, 300,000 files on disk in two tiers (sparse files: real
sizes, no blocks). Run 1 starts from an empty ``local_sizes`` table (so the inventory stats
every file); run 2 follows with nothing changed. Neither downloads, moves or deletes anything:
the seed puts every local file where the plan wants it and leaves no room for more.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cache_bench.seed import FILES, VOTES, World, build
from pypi_mirror.cache.manager import PHASES, run_cache_management
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.config import config_from_dict
from pypi_mirror.db import DB_FILENAME, Database
from pypi_mirror.repo import Repo

GOAL_SECONDS = 60.0
GOAL_SECOND_RUN = 15.0
GOAL_BYTES = 1 << 30


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class PhasePeaks:
    """Samples the resident set size every few milliseconds, per phase."""

    interval: float = 0.005
    phase: str = ""
    peaks: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # user + system seconds per phase
    _stop: threading.Event = field(default_factory=threading.Event)
    _cpu_mark: float = 0.0

    def enter(self, phase: str) -> None:
        self._record()
        moment = time.process_time()
        if self.phase:
            self.cpu[self.phase] = moment - self._cpu_mark
        self._cpu_mark = moment
        self.phase = phase
        self._record()

    def _record(self) -> None:
        if self.phase:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def __enter__(self) -> PhasePeaks:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


class NeverStop:
    def is_set(self) -> bool:
        return False


def prepare(world: World) -> Path:
    repo_path = world.work / "run"
    shutil.rmtree(repo_path, ignore_errors=True)
    repo_path.mkdir()
    shutil.copyfile(world.seed_db, repo_path / DB_FILENAME)
    return repo_path


def run_once(world: World, repo_path: Path) -> tuple[CacheResult, PhasePeaks, float]:
    config = config_from_dict(
        {
            "repo_path": str(repo_path),
            # Nothing listens there: a request the benchmark should not make fails at once.
            "upstream": {"pypi_url": "http://127.0.0.1:9", "packages_url": "http://127.0.0.1:9"},
            "cache": {
                "tiers": [
                    {"path": str(world.tier_paths[0]), "size_limit": world.limits[0]},
                    {"path": str(world.tier_paths[1]), "size_limit": world.limits[1]},
                ],
                "min_vote_count": 2,
                "vote_window": "7d",
                "size_db_ttl": "2d",
            },
        }
    )
    gc.collect()
    os.sync()  # the previous run's (or the copy's) writeback must not be billed to this one
    db = Database.in_repo(repo_path)
    repo = Repo(config)
    with PhasePeaks() as peaks:
        started = time.perf_counter()
        result = asyncio.run(
            run_cache_management(
                config,
                db,
                repo,
                dry_run=False,
                stop=NeverStop(),
                now=world.now + 3600,
                progress_bar=False,
                on_phase=peaks.enter,
            )
        )
        total = time.perf_counter() - started
    db.close()
    return result, peaks, total


def check(result: CacheResult, label: str) -> list[str]:
    problems = []
    for name in ("downloaded_files", "moved_files", "deleted_files", "head_requests", "skipped"):
        if getattr(result, name):
            problems.append(f"{label}: {name} = {getattr(result, name)} (expected 0)")
    if result.failures or result.stopped:
        problems.append(f"{label}: failures {result.failures[:3]} stopped={result.stopped}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the seeded world")
    args = parser.parse_args()
    work = Path(__file__).resolve().parent.parent / ".work" / "cache"
    if args.rebuild:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    world = build(work, log=lambda line: print(line, flush=True))
    repo_path = prepare(world)
    first, first_peaks, first_total = run_once(world, repo_path)
    second, second_peaks, second_total = run_once(world, repo_path)

    mib = 1 << 20
    load = os.getloadavg()[0]
    print()
    print(
        f"cache management: {VOTES:,} votes, {FILES:,} files, {world.local_files:,} on disk, "
        f"two tiers ({os.cpu_count()} CPUs, load average {load:.1f} at the end)"
    )
    print(f"{'':<24}{'---------- run 1 ----------':>30}{'- run 2 (nothing changed) -':>30}")
    print(f"{'phase':<24}" + f"{'wall s':>10}{'CPU s':>10}{'peak MiB':>10}" * 2)
    names = {
        "A": "A inventory",
        "B": "B candidates + sizes",
        "C": "C score + rank",
        "D": "D assign + execute",
        "E": "E cleanup",
    }
    for phase in PHASES:
        row = f"{names[phase]:<24}"
        for result, peaks in ((first, first_peaks), (second, second_peaks)):
            row += (
                f"{result.phase_seconds.get(phase, 0):>10.2f}{peaks.cpu.get(phase, 0):>10.2f}"
                f"{peaks.peaks.get(phase, 0) / mib:>10.0f}"
            )
        print(row)
    row = f"{'whole A-E':<24}"
    for total, peaks in ((first_total, first_peaks), (second_total, second_peaks)):
        row += f"{total:>10.2f}{sum(peaks.cpu.values()):>10.2f}"
        row += f"{max(peaks.peaks.values()) / mib:>10.0f}"
    print(row)
    print()
    for label, result in (("run 1", first), ("run 2", second)):
        print(
            f"{label}: {result.candidates:,} candidates, {result.votes_in_window:,} votes in the "
            f"window, hit rate {result.hit_rate:.1%}, {result.stat_calls:,} files stat'ed, "
            f"{result.votes_dropped:,} old votes dropped, {result.files_dropped:,} paths dropped"
        )
    problems = check(first, "run 1") + check(second, "run 2")
    peak = max(*first_peaks.peaks.values(), *second_peaks.peaks.values())
    goals = [
        ("whole A-E < 60 s", first_total < GOAL_SECONDS),
        ("peak memory < 1 GiB", peak < GOAL_BYTES),
        ("second run < 15 s", second_total < GOAL_SECOND_RUN),
        ("second run stats nothing", second.stat_calls == 0),
        ("nothing downloaded, moved or deleted", not problems),
    ]
    print()
    for goal, met in goals:
        print(f"  [{'ok' if met else 'MISSED'}] {goal}")
    for problem in problems:
        print(f"  {problem}")
    return 0 if all(met for _goal, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
