"""Score, tier assignment and the order of execution (pure: no I/O).

The plan is computed once from the inventory and the votes; the manager then carries out its
steps in the order given here. The order is what keeps every tier within its limit at every
moment of the run: deletions first, then moves (a move waits until its target has room, which
other moves may have to free), then downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

MIB = 1 << 20
GIB = 1 << 30
# Every file up to 2 GiB scores the same per vote: ranking is by votes, and larger files
# are penalised in proportion to their size.
SCORE_SIZE_FLOOR = 2 * GIB


def score(votes: int, size: int) -> float:
    """SPEC.md's popularity score; higher is better."""
    return votes / (max(size, SCORE_SIZE_FLOOR) + 1) * MIB


def score_per_byte(votes: int, size: int) -> float:
    """``cache.policy: per-byte``: votes per MiB held. Ten small files with the votes of one
    big one win its space: more requests are hits, fewer bytes are."""
    return votes / (size + 1) * MIB


# cache.policy -> score(votes, size); "votes" is SPEC.md's score.
SCORERS = {"votes": score, "per-byte": score_per_byte}


@dataclass(slots=True)
class Entry:
    """One file the plan decides about."""

    path: str
    size: int
    votes: int
    tier: int | None  # the tier holding it now; None when it is not local
    score: float = field(init=False)

    def __post_init__(self) -> None:
        self.score = score(self.votes, self.size)


def rank_key(entry: Entry) -> tuple[float, int, str]:
    """Highest score first; a tie goes to the smaller file (then the path, for determinism)."""
    return (-entry.score, entry.size, entry.path)


def rank(entries: Sequence[Entry], policy: str = "votes") -> list[Entry]:
    """``entries`` in rank order under ``policy`` (a key of SCORERS)."""
    if policy != "votes":
        scorer = SCORERS[policy]
        for entry in entries:
            entry.score = scorer(entry.votes, entry.size)
    return sorted(entries, key=rank_key)


def assign(ranked: Sequence[Entry], limits: Sequence[int]) -> list[int | None]:
    """The target tier of each ranked entry: the hottest tier with room left, else None.

    First fit in rank order: a file that does not fit a tier leaves the space to the
    lower-scored files after it that do, so no space is held back that a file could use.
    """
    return assign_sizes([entry.size for entry in ranked], limits)


def assign_sizes(sizes: Sequence[int], limits: Sequence[int]) -> list[int | None]:
    """``assign`` on the sizes alone (``pypi-mirror simulate`` calls it without entries)."""
    free = list(limits)
    targets: list[int | None] = []
    for size in sizes:
        for tier, room in enumerate(free):
            if size <= room:
                free[tier] = room - size
                targets.append(tier)
                break
        else:
            targets.append(None)
    return targets


class Action(Enum):
    DELETE = "delete"
    MOVE = "move"
    DOWNLOAD = "download"


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    path: str
    size: int
    source: int | None  # tier the file leaves (delete, move)
    target: int | None  # tier the file enters (move, download)


@dataclass
class TierChange:
    """What the plan does to one tier (the numbers `sync --dry-run` prints)."""

    limit: int
    files_before: int = 0
    bytes_before: int = 0
    files_after: int = 0
    bytes_after: int = 0
    download_files: int = 0
    download_bytes: int = 0
    move_in_files: int = 0
    move_in_bytes: int = 0
    move_out_files: int = 0
    move_out_bytes: int = 0
    delete_files: int = 0
    delete_bytes: int = 0


@dataclass
class Plan:
    steps: list[Step]
    tiers: list[TierChange]
    # Moves that could not be ordered without overflowing a tier (every one waited for
    # space another would free): their files are deleted and downloaded into place instead.
    cycle_breaks: int = 0

    @property
    def counts(self) -> dict[Action, int]:
        counts = dict.fromkeys(Action, 0)
        for step in self.steps:
            counts[step.action] += 1
        return counts


def make_plan(
    candidates: Sequence[Entry],
    others: Sequence[Entry],
    limits: Sequence[int],
    *,
    presorted: bool = False,
    policy: str = "votes",
) -> Plan:
    """Assign ``candidates`` to tiers and order the steps that get there.

    ``others`` are local files that are not candidates (too few votes, too large): they are
    deleted. Every local file must appear once, in one of the two lists. ``presorted``:
    the candidates are already in ``rank`` order; ``policy``: ``cache.policy``, else.
    """
    ranked = list(candidates) if presorted else rank(candidates, policy)
    targets = assign(ranked, limits)
    tiers = [TierChange(limit=limit) for limit in limits]
    usage = [0] * len(limits)
    for entry in (*candidates, *others):
        if entry.tier is not None:
            usage[entry.tier] += entry.size
            tiers[entry.tier].files_before += 1
            tiers[entry.tier].bytes_before += entry.size

    steps: list[Step] = []
    moves: list[tuple[int, Entry, int]] = []  # (rank, entry, target)
    downloads: list[tuple[int, Entry, int]] = []
    for entry in others:
        if entry.tier is not None:
            steps.append(Step(Action.DELETE, entry.path, entry.size, entry.tier, None))
    for position, (entry, target) in enumerate(zip(ranked, targets, strict=True)):
        if entry.tier is None:
            if target is not None:
                downloads.append((position, entry, target))
        elif target is None:
            steps.append(Step(Action.DELETE, entry.path, entry.size, entry.tier, None))
        elif target != entry.tier:
            moves.append((position, entry, target))
    for step in steps:
        assert step.source is not None
        usage[step.source] -= step.size

    cycle_breaks = _schedule_moves(moves, downloads, usage, limits, steps)
    downloads.sort(key=lambda item: item[0])
    for _position, entry, target in downloads:
        steps.append(Step(Action.DOWNLOAD, entry.path, entry.size, None, target))

    for step in steps:
        if step.source is not None:
            change = tiers[step.source]
            if step.action is Action.DELETE:
                change.delete_files += 1
                change.delete_bytes += step.size
            else:
                change.move_out_files += 1
                change.move_out_bytes += step.size
        if step.target is not None:
            change = tiers[step.target]
            if step.action is Action.DOWNLOAD:
                change.download_files += 1
                change.download_bytes += step.size
            else:
                change.move_in_files += 1
                change.move_in_bytes += step.size
    for change in tiers:
        change.files_after = (
            change.files_before
            - change.delete_files
            - change.move_out_files
            + change.move_in_files
            + change.download_files
        )
        change.bytes_after = (
            change.bytes_before
            - change.delete_bytes
            - change.move_out_bytes
            + change.move_in_bytes
            + change.download_bytes
        )
    return Plan(steps, tiers, cycle_breaks)


def _schedule_moves(
    moves: list[tuple[int, Entry, int]],
    downloads: list[tuple[int, Entry, int]],
    usage: list[int],
    limits: Sequence[int],
    steps: list[Step],
) -> int:
    """Append the moves to ``steps`` in an order that never overflows a tier.

    A move happens once its target has room. Demotions go first, coldest source first, so
    space trickles up from the cold end; promotions follow. When every remaining move waits
    for another (two full tiers swapping files), the lowest-ranked waiting file is deleted
    and downloaded into its target later: that frees its tier and breaks the cycle.
    """
    demotions = sorted((m for m in moves if m[2] > _source(m)), key=lambda m: (-_source(m), m[0]))
    promotions = sorted((m for m in moves if m[2] < _source(m)), key=lambda m: (m[2], m[0]))
    pending = demotions + promotions
    cycle_breaks = 0
    while pending:
        waiting = []
        for move in pending:
            _position, entry, target = move
            source = entry.tier
            assert source is not None
            if usage[target] + entry.size <= limits[target]:
                usage[target] += entry.size
                usage[source] -= entry.size
                steps.append(Step(Action.MOVE, entry.path, entry.size, source, target))
            else:
                waiting.append(move)
        if len(waiting) == len(pending):
            victim = max(waiting, key=lambda m: m[0])
            waiting.remove(victim)
            _position, entry, target = victim
            assert entry.tier is not None
            usage[entry.tier] -= entry.size
            steps.append(Step(Action.DELETE, entry.path, entry.size, entry.tier, None))
            downloads.append(victim)
            cycle_breaks += 1
        pending = waiting
    return cycle_breaks


def _source(move: tuple[int, Entry, int]) -> int:
    tier = move[1].tier
    assert tier is not None
    return tier
