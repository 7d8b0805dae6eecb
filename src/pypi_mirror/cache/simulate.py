"""Replay downloads through the vote rules and the cache plan (``pypi-mirror simulate``).

The requests are turned once into integer arrays (file id, prefix id, counted-vote flag), so
that every budget × policy run shares them. The replay then walks the log in ``sync_every``
steps of log time: at each step the votes in ``vote_window`` are counted incrementally (one
add and one removal per vote over the whole log), the candidates are ranked once per policy
with plan.py's scorers and placed per budget with plan.py's ``assign_sizes``, and the requests
up to the next step are hits when their file is in the cache that plan left.
"""

from __future__ import annotations

import bisect
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import neg

from pypi_mirror.cache.logread import Download
from pypi_mirror.cache.plan import SCORERS, assign_sizes
from pypi_mirror.cache.votes import is_bot
from pypi_mirror.db import Database, StoreLocation
from pypi_mirror.server.clientip import parse_ip, vote_prefix

DAY = 86400.0


@dataclass
class Requests:
    """Downloads as arrays indexed by request (in time order) and files by id."""

    times: array  # unix seconds
    files: array  # file id
    voted: bytearray  # 1: a vote that is stored (no bot, no duplicate within dedup_window)
    prefixes: array  # prefix id of the vote (-1: none)
    sizes: list[int]  # by file id
    paths: list[str]  # by file id
    prefix_count: int = 0
    skipped_requests: int = 0  # size unknown
    skipped_files: int = 0
    bot_requests: int = 0
    duplicate_votes: int = 0
    bad_lines: int = 0

    def __len__(self) -> int:
        return len(self.times)


def load_requests(
    downloads: Iterable[Download],
    *,
    dedup_window: float,
    known_sizes: Callable[[list[str]], dict[str, int]] | None = None,
) -> Requests:
    """Intern paths and prefixes, apply the bot filter and ``dedup_window`` (as the vote
    writer does: a (file, prefix) pair stored less than the window ago is not stored again).

    Sizes come from the log; ``known_sizes`` is asked for the files it gives none of; requests
    for files whose size stays unknown are skipped (and counted)."""
    file_ids: dict[str, int] = {}
    paths: list[str] = []
    sizes: list[int] = []
    prefix_of_ip: dict[str, int] = {}
    prefix_ids: dict[str, int] = {}
    bots: dict[str, bool] = {}
    times = array("q")
    files = array("l")
    prefixes = array("l")
    for moment, ip, path, size, agent in downloads:
        file_id = file_ids.get(path)
        if file_id is None:
            file_id = file_ids[path] = len(paths)
            paths.append(path)
            sizes.append(-1)
        if size is not None and size > sizes[file_id]:
            sizes[file_id] = size  # the largest 200 seen: a client may hang up mid-file
        bot = bots.get(agent)
        if bot is None:
            bot = bots[agent] = is_bot(agent)
        prefix = -1
        if not bot:
            prefix = prefix_of_ip.get(ip, -2)
            if prefix == -2:
                address = parse_ip(ip)
                network = vote_prefix(address) if address is not None else ""
                prefix = prefix_ids.setdefault(network, len(prefix_ids)) if network else -1
                prefix_of_ip[ip] = prefix
        times.append(moment)
        files.append(file_id)
        prefixes.append(prefix)

    requests = Requests(times, files, bytearray(), prefixes, sizes, paths, len(prefix_ids))
    requests.bot_requests = prefixes.count(-1)
    missing = [paths[i] for i, size in enumerate(sizes) if size < 0]
    if missing and known_sizes is not None:
        for path, size in known_sizes(missing).items():
            sizes[file_ids[path]] = size
    _drop_unknown_sizes(requests)
    _in_time_order(requests)
    _count_votes(requests, dedup_window)
    return requests


def _drop_unknown_sizes(requests: Requests) -> None:
    sizes = requests.sizes
    requests.skipped_files = sum(1 for size in sizes if size < 0)
    if not requests.skipped_files:
        return
    keep = [sizes[file_id] >= 0 for file_id in requests.files]
    requests.skipped_requests = len(keep) - sum(keep)
    requests.times = array("q", compress(requests.times, keep))
    requests.files = array("l", compress(requests.files, keep))
    requests.prefixes = array("l", compress(requests.prefixes, keep))


def _in_time_order(requests: Requests) -> None:
    """Several logs, or workers' lines flushed a second apart: sort (stable) when needed."""
    times = requests.times
    if all(times[i] <= times[i + 1] for i in range(len(times) - 1)):
        return
    order = sorted(range(len(times)), key=times.__getitem__)
    requests.times = array("q", (times[i] for i in order))
    requests.files = array("l", (requests.files[i] for i in order))
    requests.prefixes = array("l", (requests.prefixes[i] for i in order))


def _count_votes(requests: Requests, dedup_window: float) -> None:
    stored_at: dict[int, int] = {}  # file id * prefixes + prefix id -> time of the last vote
    width = max(requests.prefix_count, 1)
    voted = bytearray(len(requests))
    duplicates = 0
    for index, (moment, file_id, prefix) in enumerate(
        zip(requests.times, requests.files, requests.prefixes, strict=True)
    ):
        if prefix < 0:
            continue
        key = file_id * width + prefix
        last = stored_at.get(key)
        if last is not None and last > moment - dedup_window:
            duplicates += 1
            continue
        stored_at[key] = moment
        voted[index] = 1
    requests.voted = voted
    requests.duplicate_votes = duplicates


def sizes_from_database(store: StoreLocation) -> Callable[[list[str]], dict[str, int]]:
    """Sizes the mirror knows (``local_sizes``, then ``remote_sizes``), read-only."""

    def lookup(paths: list[str]) -> dict[str, int]:
        if store.sqlite_path is not None and not store.sqlite_path.exists():
            return {}
        db = Database(store, "simulate")
        try:
            return db.known_sizes(paths)
        finally:
            db.close()

    return lookup


@dataclass
class Tally:
    """What one part of the log (warm-up or measured) saw under one run."""

    requests: int = 0
    hits: int = 0
    bytes: int = 0
    hit_bytes: int = 0
    votes: int = 0
    vote_hits: int = 0
    downloaded: int = 0
    seconds: float = 0.0  # log time covered

    def rate(self, part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    @property
    def request_hit(self) -> float:
        return self.rate(self.hits, self.requests)

    @property
    def byte_hit(self) -> float:
        return self.rate(self.hit_bytes, self.bytes)

    @property
    def vote_hit(self) -> float:
        return self.rate(self.vote_hits, self.votes)

    @property
    def downloaded_per_day(self) -> float:
        return self.downloaded / self.seconds * DAY if self.seconds else 0.0


@dataclass
class Run:
    """One budget (tier limits) under one policy."""

    limits: tuple[int, ...]
    policy: str
    warmup: Tally = field(default_factory=Tally)
    measured: Tally = field(default_factory=Tally)
    cpu_seconds: float = 0.0  # this run's own work (placing, counting)
    cached: bytearray = field(default_factory=bytearray, repr=False)
    held: list[int] = field(default_factory=list, repr=False)

    @property
    def budget(self) -> int:
        return sum(self.limits)


@dataclass
class Settings:
    vote_window: float
    min_vote_count: int
    filesize_limit: int
    sync_every: float
    warmup: float


def simulate(
    requests: Requests,
    runs: Sequence[Run],
    settings: Settings,
    on_step: Callable[[int, int], None] | None = None,
) -> float:
    """Replay ``requests`` under every run; returns the seconds of the shared work (vote
    counting, ranking). ``on_step(done, total)`` is told after each sync step."""
    if not len(requests):
        return 0.0
    times, files, voted = requests.times, requests.files, requests.voted
    sizes, paths = requests.sizes, requests.paths
    request_sizes = [sizes[file_id] for file_id in files]
    start, end = times[0], times[-1]
    warm_end = start + settings.warmup
    # Ties are broken as plan.rank_key does (smaller file, then path): one int per file.
    tie = [0] * len(paths)
    for position, file_id in enumerate(
        sorted(range(len(paths)), key=lambda f: (sizes[f], paths[f]))
    ):
        tie[file_id] = position
    for run in runs:
        run.cached = bytearray(len(paths))
    window = _VoteWindow(requests, settings)
    policies = sorted({run.policy for run in runs})
    steps = int((end - start) // settings.sync_every) + 1
    shared = 0.0
    position = 0
    for step in range(steps):
        moment = start + step * settings.sync_every
        clock = time.perf_counter()
        candidates = window.candidates(moment)
        ranked: dict[str, tuple[list[int], list[int]]] = {}
        if candidates is not None:
            for policy in policies:
                scorer = SCORERS[policy]
                scores = map(scorer, candidates[1], (sizes[f] for f in candidates[0]))
                order = sorted(
                    zip(
                        map(neg, scores),
                        (tie[f] for f in candidates[0]),
                        candidates[0],
                        strict=True,
                    )
                )
                chosen = [item[2] for item in order]
                ranked[policy] = (chosen, [sizes[f] for f in chosen])
        shared += time.perf_counter() - clock
        upto = bisect.bisect_left(times, moment + settings.sync_every, lo=position)
        split = min(max(bisect.bisect_left(times, warm_end, lo=position), position), upto)
        for run in runs:
            clock = time.perf_counter()
            tally = run.warmup if moment < warm_end else run.measured
            if candidates is not None:
                tally.downloaded += _replan(run, *ranked[run.policy], sizes)
            _count(run, run.warmup, position, split, files, voted, request_sizes)
            _count(run, run.measured, split, upto, files, voted, request_sizes)
            run.cpu_seconds += time.perf_counter() - clock
        position = upto
        if on_step is not None:
            on_step(step + 1, steps)
    for run in runs:
        run.warmup.seconds = min(warm_end, end) - start
        run.measured.seconds = end - min(warm_end, end)
    return shared


def _replan(run: Run, ranked: list[int], ranked_sizes: list[int], sizes: list[int]) -> int:
    """Apply one plan to the run's cache; returns the bytes it downloads."""
    targets = assign_sizes(ranked_sizes, run.limits)
    held = [file_id for file_id, target in zip(ranked, targets, strict=True) if target is not None]
    cached = run.cached
    downloaded = sum(sizes[f] for f in held if not cached[f])
    for file_id in run.held:
        cached[file_id] = 0
    for file_id in held:
        cached[file_id] = 1
    run.held = held
    return downloaded


def _count(
    run: Run,
    tally: Tally,
    begin: int,
    stop: int,
    files: array,
    voted: bytearray,
    request_sizes: list[int],
) -> None:
    if stop <= begin:
        return
    hit = bytes(map(run.cached.__getitem__, files[begin:stop]))
    wanted = request_sizes[begin:stop]
    tally.requests += stop - begin
    tally.hits += hit.count(1)
    tally.bytes += sum(wanted)
    tally.hit_bytes += sum(compress(wanted, hit))
    votes = voted[begin:stop]
    tally.votes += votes.count(1)
    tally.vote_hits += sum(compress(votes, hit))


class _VoteWindow:
    """Votes per file and distinct prefixes per file within ``vote_window`` of a moment,
    kept up to date as the moment moves forward (each vote is added and removed once)."""

    def __init__(self, requests: Requests, settings: Settings) -> None:
        self._events = [i for i, flag in enumerate(requests.voted) if flag]
        self._times = requests.times
        self._files = requests.files
        self._prefixes = requests.prefixes
        self._width = max(requests.prefix_count, 1)
        self._window = settings.vote_window
        self._minimum = settings.min_vote_count
        self._too_big = [size > settings.filesize_limit for size in requests.sizes]
        self._votes = [0] * len(requests.sizes)
        self._distinct = [0] * len(requests.sizes)
        self._pairs: dict[int, int] = {}
        self._eligible: set[int] = set()
        self._added = 0
        self._removed = 0

    def candidates(self, moment: float) -> tuple[list[int], list[int]] | None:
        """(file ids, votes) with enough distinct prefixes and not too big, as sync sees
        them at ``moment`` (votes with ``moment - vote_window <= time < moment``); None when
        the window holds no vote at all (sync then leaves the cache as it is)."""
        events, times = self._events, self._times
        while self._added < len(events) and times[events[self._added]] < moment:
            self._change(events[self._added], 1)
            self._added += 1
        since = moment - self._window
        while self._removed < self._added and times[events[self._removed]] < since:
            self._change(events[self._removed], -1)
            self._removed += 1
        if self._removed == self._added:
            return None
        chosen = sorted(self._eligible)
        return chosen, [self._votes[f] for f in chosen]

    def _change(self, index: int, delta: int) -> None:
        file_id = self._files[index]
        key = file_id * self._width + self._prefixes[index]
        count = self._pairs.get(key, 0) + delta
        self._votes[file_id] += delta
        if count:
            self._pairs[key] = count
        else:
            del self._pairs[key]
        if (count == 1 and delta == 1) or count == 0:
            distinct = self._distinct[file_id] = self._distinct[file_id] + delta
            if self._too_big[file_id]:
                return
            if distinct >= self._minimum:
                self._eligible.add(file_id)
            else:
                self._eligible.discard(file_id)
