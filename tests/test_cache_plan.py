"""Score, tier assignment and execution order: unit tests and hypothesis properties."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from pypi_mirror.cache.plan import (
    GIB,
    MIB,
    Action,
    Entry,
    Plan,
    assign,
    make_plan,
    rank,
    score,
)

# -- score -----------------------------------------------------------------------------------


def test_score_is_the_spec_formula() -> None:
    assert score(3, 100) == 3 / (2 * GIB + 1) * 1048576
    assert score(5, 3 * GIB) == 5 / (3 * GIB + 1) * 1048576
    assert score(0, 10) == 0.0


def test_every_file_up_to_2_gib_scores_the_same_per_vote() -> None:
    assert score(7, 0) == score(7, 1) == score(7, 2 * GIB)
    assert score(7, 2 * GIB + 1) < score(7, 2 * GIB)


def test_large_files_are_penalised_in_proportion_to_size() -> None:
    # Twice the size (above the floor) needs twice the votes for the same score.
    assert score(2, 4 * GIB + 1) == score(1, 2 * GIB)
    assert score(2, 4 * GIB + 2) < score(1, 2 * GIB) < score(2, 4 * GIB)


def test_rank_orders_by_score_then_smaller_file() -> None:
    entries = [
        Entry("big", 100 * MIB, 5, None),
        Entry("small", 1 * MIB, 5, None),
        Entry("popular", 500 * MIB, 9, None),
        Entry("huge", 3 * GIB, 9, None),
    ]
    assert [e.path for e in rank(entries)] == ["popular", "huge", "small", "big"]


def test_rank_breaks_exact_ties_by_size_then_path() -> None:
    entries = [Entry("b", 10, 3, None), Entry("a", 10, 3, None), Entry("c", 9, 3, None)]
    assert [e.path for e in rank(entries)] == ["c", "a", "b"]


# -- assignment: examples --------------------------------------------------------------------


def test_hottest_tier_with_room_first_fit() -> None:
    ranked = rank(
        [
            Entry("a", 60, 10, None),
            Entry("b", 60, 9, None),  # does not fit tier 0 any more
            Entry("c", 40, 8, None),  # fits the rest of tier 0
            Entry("d", 100, 7, None),  # fits nowhere
        ]
    )
    assert assign(ranked, [100, 100]) == [0, 1, 0, None]


def test_swap_between_two_full_tiers_breaks_the_cycle() -> None:
    # Tier 0 holds a and x, tier 1 holds b and y, both full; now b beats a.
    candidates = [
        Entry("b", 5, 10, 1),
        Entry("x", 5, 9, 0),
        Entry("a", 5, 8, 0),
        Entry("y", 5, 7, 1),
    ]
    plan = make_plan(candidates, [], [10, 10])
    assert plan.cycle_breaks == 1
    check_schedule(candidates, [], [10, 10], plan)
    assert [(s.action, s.path) for s in plan.steps] == [
        (Action.DELETE, "a"),
        (Action.MOVE, "b"),
        (Action.DOWNLOAD, "a"),
    ]


def test_space_freed_by_one_move_is_used_by_another() -> None:
    # c (tier 1) must go to tier 0, which is full until a leaves for tier 1, which has room.
    candidates = [Entry("c", 5, 10, 1), Entry("a", 5, 9, 0), Entry("b", 5, 8, 0)]
    plan = make_plan(candidates, [], [10, 10])
    assert plan.cycle_breaks == 0
    check_schedule(candidates, [], [10, 10], plan)
    assert [(s.action, s.path, s.target) for s in plan.steps] == [
        (Action.MOVE, "b", 1),
        (Action.MOVE, "c", 0),
    ]


def test_dry_run_numbers_per_tier() -> None:
    candidates = [
        Entry("hot", 30, 10, 1),  # promote
        Entry("new", 20, 9, None),  # download to tier 0
        Entry("warm", 50, 8, 0),  # demote
        Entry("cold", 80, 1, 1),  # no room left: evict
    ]
    others = [Entry("junk", 7, 0, 0)]
    plan = make_plan(candidates, others, [60, 80])
    assert plan.cycle_breaks == 0
    t0, t1 = plan.tiers
    assert (t0.files_before, t0.bytes_before) == (2, 57)
    assert (t1.files_before, t1.bytes_before) == (2, 110)
    assert (t0.delete_files, t0.delete_bytes) == (1, 7)
    assert (t0.move_out_files, t0.move_out_bytes) == (1, 50)
    assert (t0.move_in_files, t0.move_in_bytes) == (1, 30)
    assert (t0.download_files, t0.download_bytes) == (1, 20)
    assert (t1.delete_files, t1.delete_bytes) == (1, 80)
    assert (t1.move_in_files, t1.move_out_files) == (1, 1)
    assert (t0.files_after, t0.bytes_after) == (2, 50)
    assert (t1.files_after, t1.bytes_after) == (1, 50)
    check_schedule(candidates, others, [60, 80], plan)


# -- properties ------------------------------------------------------------------------------

SIZES = st.one_of(
    st.integers(0, 100),
    st.integers(0, 5 * GIB),
    st.sampled_from([0, 1, 2 * GIB, 2 * GIB + 1, 4 * GIB]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Entry], list[Entry], list[int]]:
    tier_count = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([100, 6 * GIB]))
    limits = draw(st.lists(st.integers(0, scale * 3), min_size=tier_count, max_size=tier_count))
    count = draw(st.integers(0, 30))
    candidates = []
    for number in range(count):
        size = draw(SIZES) if scale > 100 else draw(st.integers(0, 100))
        votes = draw(st.integers(1, 6))
        tier = draw(st.one_of(st.none(), st.integers(0, tier_count - 1)))
        candidates.append(Entry(f"f{number}", size, votes, tier))
    others = [
        Entry(f"o{number}", draw(st.integers(0, scale)), 0, draw(st.integers(0, tier_count - 1)))
        for number in range(draw(st.integers(0, 5)))
    ]
    return candidates, others, limits


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_every_tier_stays_within_its_limit(
    scenario: tuple[list[Entry], list[Entry], list[int]],
) -> None:
    candidates, _others, limits = scenario
    ranked = rank(candidates)
    targets = assign(ranked, limits)
    for tier, limit in enumerate(limits):
        assert sum(e.size for e, t in zip(ranked, targets, strict=True) if t == tier) <= limit


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_no_file_is_kept_out_by_lower_scored_files(
    scenario: tuple[list[Entry], list[Entry], list[int]],
) -> None:
    """A file is left out of a tier (placed colder, or nowhere) only when the files ranked
    above it in that tier leave no room: never because a lower-scored file holds the space."""
    candidates, _others, limits = scenario
    ranked = rank(candidates)
    targets = assign(ranked, limits)
    for position, (entry, target) in enumerate(zip(ranked, targets, strict=True)):
        colder_than = len(limits) if target is None else target
        for tier in range(colder_than):
            above = sum(
                e.size
                for e, t in zip(ranked[:position], targets[:position], strict=True)
                if t == tier
            )
            assert above + entry.size > limits[tier], (entry, tier)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_rank_is_by_score_then_size(
    scenario: tuple[list[Entry], list[Entry], list[int]],
) -> None:
    ranked = rank(scenario[0])
    for first, second in itertools.pairwise(ranked):
        assert first.score >= second.score
        if first.score == second.score:
            assert first.size <= second.size


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_execution_order_never_overflows_and_reaches_the_plan(
    scenario: tuple[list[Entry], list[Entry], list[int]],
) -> None:
    candidates, others, limits = scenario
    plan = make_plan(candidates, others, limits)
    check_schedule(candidates, others, limits, plan)


def check_schedule(
    candidates: Sequence[Entry], others: Sequence[Entry], limits: Sequence[int], plan: Plan
) -> None:
    """Replay the steps: each one starts from where the file is, no step that adds to a tier
    takes it over its limit, and the end state is the assignment."""
    where = {e.path: e.tier for e in (*candidates, *others) if e.tier is not None}
    sizes = {e.path: e.size for e in (*candidates, *others)}
    usage = [0] * len(limits)
    for path, tier in where.items():
        usage[tier] += sizes[path]
    seen_download = False
    for step in plan.steps:
        assert step.size == sizes[step.path]
        if step.action is Action.DOWNLOAD:
            assert step.path not in where
            seen_download = True
        else:
            assert not seen_download, "downloads come last"
            assert where.get(step.path) == step.source
            usage[step.source] -= step.size
            del where[step.path]
        if step.target is not None:
            usage[step.target] += step.size
            assert usage[step.target] <= limits[step.target], step
            where[step.path] = step.target
    ranked = rank(candidates)
    expected = {
        e.path: t for e, t in zip(ranked, assign(ranked, limits), strict=True) if t is not None
    }
    assert where == expected
    for tier, change in enumerate(plan.tiers):
        assert change.bytes_after == usage[tier]
        assert change.files_after == sum(1 for t in where.values() if t == tier)
