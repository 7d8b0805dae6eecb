"""Cache management, phases A–E of SPEC.md (the second half of ``pypi-mirror sync``): the
order of the phases, one run at a time per repository. Each phase lives in its own module:

A inventory   (cache/inventory.py) walk every tier; ``local_sizes`` is the cache of what is
              there, so only names the table does not know are stat'ed; temporary files of
              crashed runs go.
B sizes       (cache/sizes.py) files with enough votes from distinct prefixes; sizes from the
              disk, from ``remote_sizes``, from the index we hold (cache/lookup.py), else HEAD
              upstream.
C score       (cache/plan.py) SPEC's formula (or cache.policy's), ranked; pinned files
              (cache/pins.py) go first, so tier 0 holds them whatever their votes.
D assign      (cache/plan.py, cache/execute.py) first fit into the hottest tier with room;
              executed as deletions, moves (each once its target has room), downloads
              (verified, streamed to a temporary file).
E cleanup     (cache/cleanup.py) old votes, old remote sizes, rows of files no longer on
              disk, orphan paths.

What the run did is told by cache/report.py. The database follows the disk, never the other
way round: every change is made on disk first and recorded after, so an interrupted run
(signal or ``kill -9``) leaves at worst rows that the next run's inventory corrects.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import aiohttp

from pypi_mirror.cache.cleanup import cleanup
from pypi_mirror.cache.download import StopSignal
from pypi_mirror.cache.execute import execute_plan
from pypi_mirror.cache.inventory import take_inventory
from pypi_mirror.cache.lock import cache_lock
from pypi_mirror.cache.lookup import IndexLookup
from pypi_mirror.cache.pins import apply_pins
from pypi_mirror.cache.plan import Entry, Plan, make_plan, rank
from pypi_mirror.cache.report import CacheResult, TierState
from pypi_mirror.cache.sizes import Candidates, find_candidates
from pypi_mirror.config import Config
from pypi_mirror.db import Database
from pypi_mirror.filters import Filters, filters_of
from pypi_mirror.index.quarantine import load as load_quarantined
from pypi_mirror.index.quarantine import refused_paths
from pypi_mirror.repo import Repo
from pypi_mirror.upstream import make_session

log = logging.getLogger(__name__)

PHASES = ("A", "B", "C", "D", "E")


async def run_cache_management(
    config: Config,
    db: Database,
    repo: Repo,
    *,
    dry_run: bool,
    stop: StopSignal,
    now: float | None = None,
    session: aiohttp.ClientSession | None = None,
    progress_bar: bool | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> CacheResult:
    """Phases A–E. ``now`` fixes the clock (benchmarks); ``on_phase`` is told when each
    phase starts (and ``""`` at the end), for measurements."""
    result = CacheResult(
        dry_run=dry_run,
        tiers=[TierState(t.index, t.path, t.size_limit) for t in repo.tiers],
    )
    # One cache manager at a time per repository (overlapping runs, on any host).
    with cache_lock(config, repo, 0, "sync") if not dry_run else _nothing() as allowed:
        if not allowed:
            result.failures.append("another sync is managing the cache; skipped")
            return result
        owned: list[aiohttp.ClientSession] = []

        def session_factory() -> aiohttp.ClientSession:
            if session is not None:
                return session
            if not owned:
                owned.append(make_session(config))
            return owned[0]

        try:
            await _run(
                config,
                db,
                repo,
                result,
                session_factory,
                dry_run=dry_run,
                stop=stop,
                now=time.time() if now is None else now,
                progress_bar=progress_bar,
                on_phase=on_phase or (lambda _phase: None),
            )
        except Exception as error:
            # A local store failed (disk full, database): the counts so far still go into
            # the summary; the next run's inventory picks up from the disk.
            log.exception("cache management failed")
            result.failures.append(f"aborted ({type(error).__name__}: {error})")
        finally:
            for own in owned:
                await own.close()
    return result


@contextmanager
def _nothing() -> Iterator[bool]:
    yield True


async def _run(
    config: Config,
    db: Database,
    repo: Repo,
    result: CacheResult,
    session_factory: Callable[[], aiohttp.ClientSession],
    *,
    dry_run: bool,
    stop: StopSignal,
    now: float,
    progress_bar: bool | None,
    on_phase: Callable[[str], None],
) -> None:
    clock = time.perf_counter()

    def enter(phase: str) -> None:
        nonlocal clock
        moment = time.perf_counter()
        if result.phase_seconds:
            last = next(reversed(result.phase_seconds))
            result.phase_seconds[last] = moment - clock
        clock = moment
        if phase:
            result.phase_seconds[phase] = 0.0
        on_phase(phase)

    # Phases A-D build millions of small long-lived objects (paths, rows, entries) that form
    # no cycles; the cyclic collector would walk them again and again (measured: about half
    # the time of a run). It is paused while they are built, and they are kept out of its way
    # (frozen) while the execution, which does make cyclic garbage, runs with it enabled.
    collecting = gc.isenabled()
    gc.disable()
    try:
        enter("A")
        inventory = take_inventory(repo, db, result, dry_run=dry_run, stop=stop)
        _tier_states(result, inventory.usage, inventory.counts)
        if result.stopped:
            return
        lookup = IndexLookup(repo)
        enter("B")
        candidates = await find_candidates(
            config,
            db,
            inventory,
            result,
            session_factory,
            lookup,
            now=now,
            dry_run=dry_run,
            stop=stop,
            progress_bar=progress_bar,
        )
        if stop.is_set():
            result.stopped = True
            return
        refused, filters = refused_paths(load_quarantined(repo.root)), filters_of(config.filters)
        _drop_quarantined(candidates, refused, filters)
        enter("C")
        ranked = rank(candidates.entries, config.cache.policy)
        ranked = apply_pins(config, db, repo, candidates, ranked, inventory.local, result)
        enter("D")
        others = candidates.others
        if result.votes_in_window == 0 and others:
            # An empty vote table (a new database beside an existing cache) must not wipe
            # the cache: with no votes at all, nothing is planned.
            result.notes.append("no votes in the window: the cache is left as it is")
            # Except the files no vote could keep (quarantined, denied, cache_exclude).
            others = [e for e in others if e.path in refused or filters.keeps_out_of_cache(e.path)]
        plan = make_plan(ranked, others, [t.limit for t in result.tiers], presorted=True)
        result.plan = plan
        final: dict[str, int] | dict[str, tuple[int, int]]
        if dry_run:
            for state, change in zip(result.tiers, plan.tiers, strict=True):
                state.files, state.bytes = change.files_after, change.bytes_after
            final = _planned_placement(inventory.local, plan)
        else:
            gc.freeze()
            if collecting:
                gc.enable()
            executor = await execute_plan(
                config,
                repo,
                db,
                plan,
                inventory,
                candidates,
                result,
                lookup,
                session_factory,
                stop=stop,
                now=now,
                progress_bar=progress_bar,
            )
            final = executor.local
            _tier_states(result, executor.usage, executor.counts)
        result.votes_local = sum(e.votes for e in ranked if e.path in final) + sum(
            votes for path, votes in candidates.votes_of_others.items() if path in final
        )
        if result.stopped:
            return
        enter("E")
        if dry_run:
            result.votes_dropped = db.count_votes_before(now - config.cache.vote_window)
            result.remote_sizes_dropped = db.count_remote_sizes_before(
                now - config.cache.size_db_ttl
            )
        else:
            stale = [path for path in inventory.stale if path not in final]
            cleanup(config, db, stale, result, now=now)
    finally:
        enter("")
        gc.unfreeze()
        if collecting:
            gc.enable()


def _drop_quarantined(candidates: Candidates, refused: frozenset[str], filters: Filters) -> None:
    """PEP 792: a quarantined project's files are wanted by no vote count: those held locally
    join the files that go (from every tier), the others are not downloaded. The files of a
    denied project (filters.deny_projects) and those of filters.cache_exclude go the same way."""
    if not refused and not filters:
        return
    kept: list[Entry] = []
    for entry in candidates.entries:
        if entry.path not in refused and not filters.keeps_out_of_cache(entry.path):
            kept.append(entry)
        elif entry.tier is not None:
            candidates.others.append(entry)
            candidates.votes_of_others[entry.path] = entry.votes
    candidates.entries = kept


def _planned_placement(local: dict[str, tuple[int, int]], plan: Plan) -> dict[str, int]:
    final = {path: tier for path, (_size, tier) in local.items()}
    for step in plan.steps:
        if step.source is not None:
            final.pop(step.path, None)
        if step.target is not None:
            final[step.path] = step.target
    return final


def _tier_states(result: CacheResult, usage: list[int], counts: list[int]) -> None:
    for state in result.tiers:
        state.bytes, state.files = usage[state.index], counts[state.index]
