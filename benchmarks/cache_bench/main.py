"""Benchmark of cache management (phases A–E): time and peak memory of each phase.

10,000,000 votes over 500,000 files, 300,000 files on disk in two tiers (sparse files: real
sizes, no blocks). Run 1 starts from an empty ``local_sizes`` table (so the inventory stats
every file); run 2 follows with nothing changed. Neither downloads, moves or deletes anything:
the seed puts every local file where the plan wants it and leaves no room for more.

``--database postgresql`` (or ``both``) runs the same on a PostgreSQL server of its own
(durable settings, see bench_pg.py) holding the same rows, through ``database.url``.
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

from bench_pg import BenchPostgres

from cache_bench.pgseed import SEED_DB, build_pg
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
    # PostgreSQL: the server's processes (PSS added up) and CPU, per phase.
    server: BenchPostgres | None = None
    server_peaks: dict[str, int] = field(default_factory=dict)
    server_cpu: dict[str, float] = field(default_factory=dict)
    _server_cpu_mark: float = 0.0

    def enter(self, phase: str) -> None:
        self._record()
        moment = time.process_time()
        if self.phase:
            self.cpu[self.phase] = moment - self._cpu_mark
        self._cpu_mark = moment
        if self.server is not None:
            server_moment = self.server.cpu_seconds()
            if self.phase:
                self.server_cpu[self.phase] = server_moment - self._server_cpu_mark
            self._server_cpu_mark = server_moment
        self.phase = phase
        self._record()

    def _record(self) -> None:
        if self.phase:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def _run_server(self) -> None:
        # Reading every process's smaps_rollup costs a few ms: sampled less often.
        assert self.server is not None
        while not self._stop.wait(0.1):
            phase = self.phase
            if phase:
                used = self.server.memory_bytes()
                self.server_peaks[phase] = max(self.server_peaks.get(phase, 0), used)

    def __enter__(self) -> PhasePeaks:
        self._threads = [threading.Thread(target=self._run, daemon=True)]
        if self.server is not None:
            self._threads.append(threading.Thread(target=self._run_server, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class NeverStop:
    def is_set(self) -> bool:
        return False


def prepare(world: World, server: BenchPostgres | None) -> tuple[Path, str | None]:
    """The run's repository folder and (PostgreSQL) its database, fresh copies of the seed."""
    repo_path = world.work / "run"
    shutil.rmtree(repo_path, ignore_errors=True)
    repo_path.mkdir()
    if server is None:
        shutil.copyfile(world.seed_db, repo_path / DB_FILENAME)
        return repo_path, None
    return repo_path, server.fresh_database("run", template=SEED_DB)


def run_once(
    world: World, repo_path: Path, url: str | None, server: BenchPostgres | None
) -> tuple[CacheResult, PhasePeaks, float]:
    config = config_from_dict(
        {
            "repo_path": str(repo_path),
            **({"database": {"url": url}} if url else {}),
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
    db = Database.open(config.store)
    repo = Repo(config)
    with PhasePeaks(server=server) as peaks:
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


def run_backend(world: World, backend: str) -> bool:
    """Two runs on one backend; prints their table. True when every goal is met."""
    server: BenchPostgres | None = None
    seeding: dict[str, float] = {}
    if backend == "postgresql":
        server = BenchPostgres("cache-pg", world.work.parent)
        server.start(log=lambda line: print(line, flush=True))
        seeding = build_pg(world, server, log=lambda line: print(line, flush=True))
    try:
        repo_path, url = prepare(world, server)
        first, first_peaks, first_total = run_once(world, repo_path, url, server)
        second, second_peaks, second_total = run_once(world, repo_path, url, server)
    finally:
        if server is not None:
            server.stop()

    mib = 1 << 20
    load = os.getloadavg()[0]
    print()
    print(
        f"cache management on {backend}: {VOTES:,} votes, {FILES:,} files, "
        f"{world.local_files:,} on disk, two tiers ({os.cpu_count()} CPUs, load average "
        f"{load:.1f} at the end)"
    )
    if server is not None:
        print(f"  {server.note}")
        print(
            f"  seed: COPY {seeding.get('copy', 0):.0f} s, indexes {seeding.get('index', 0):.0f} s,"
            f" VACUUM ANALYZE {seeding.get('vacuum_analyze', 0):.0f} s (not measured below; "
            f"database {seeding.get('size_bytes', 0) / mib:,.0f} MiB); each run on a file copy"
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
    if server is not None:
        print()
        print("PostgreSQL server, all its processes (CPU s; peak memory: PSS added up, MiB)")
        print(f"{'phase':<24}" + f"{'':>10}{'CPU s':>10}{'PSS MiB':>10}" * 2)
        for phase in [*PHASES, ""]:
            row = f"{names.get(phase, 'whole A-E'):<24}"
            for peaks in (first_peaks, second_peaks):
                cpu = peaks.server_cpu.get(phase) if phase else sum(peaks.server_cpu.values())
                used = (
                    peaks.server_peaks.get(phase, 0)
                    if phase
                    else max(peaks.server_peaks.values(), default=0)
                )
                row += f"{'':>10}{cpu or 0:>10.2f}{used / mib:>10.0f}"
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
    print(flush=True)
    return all(met for _goal, met in goals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the seeded world")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="the store to run on (postgresql: a server of its own under benchmarks/.work/)",
    )
    args = parser.parse_args()
    work = Path(__file__).resolve().parent.parent / ".work" / "cache"
    if args.rebuild:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    world = build(work, log=lambda line: print(line, flush=True))
    backends = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    ok = True
    for backend in backends:
        ok = run_backend(world, backend) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
