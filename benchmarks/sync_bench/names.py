"""The synthetic population: project i's name and serial (shared by upstream and seeding)."""

from __future__ import annotations

import re

_NORMALIZED = re.compile(r"bench-pkg-(\d{7})")
BASE_SERIAL = 10_000_000


def normalized_name(i: int) -> str:
    return f"bench-pkg-{i:07d}"


def display_name(i: int) -> str:
    # A third of the listing uses a non-normalised spelling, as PyPI's listing does.
    return f"Bench_Pkg.{i:07d}" if i % 3 == 0 else normalized_name(i)


def serial_of(i: int) -> int:
    return BASE_SERIAL + 37 * i


def project_index(name: str) -> int | None:
    match = _NORMALIZED.fullmatch(name)
    return int(match.group(1)) if match else None


def is_fetched(i: int, every: int) -> bool:
    """Projects the mirror does not hold yet: one in ``every``."""
    return i % every == every // 2


def template_of(i: int, count: int) -> int:
    """Which body template project i gets: a multiplicative hash, so any regular subset of
    projects (every 20th, every 500th) still draws from all templates."""
    return (i * 2654435761 % 2**32) * count >> 32
