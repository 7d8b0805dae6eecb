"""What the server's answers count as (pure functions, no I/O): the outcome label of
/metrics, file hits and misses, and the hourly sums the status page draws.

A request is kept as (route, outcome, status) — ``Request.route``/``.outcome`` and the status
sent — everywhere it is counted (per worker, in the hourly table); these functions turn that
into what operators read, so both /metrics and the status page say the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HOUR = 3600


def outcome_label(outcome: str, status: int) -> str:
    """The ``outcome`` label: where a good answer came from (tier0…, 302, proxy, local,
    fetched), else what the status says (304, 404, error); "other" for the rest (301s...)."""
    if status == 304:
        return "304"
    if status == 404:
        return "404"
    if status >= 400:
        return "error"
    return outcome or "other"


def file_result(route: str, outcome: str, status: int) -> str | None:
    """A file answer's result: "hit" (from a tier, revalidations included), "miss" (sent
    to the upstream: 302 or proxy), or None (not a file answer, or an error)."""
    if route != "file" or status >= 400:
        return None
    if outcome.startswith("tier"):
        return "hit"
    if outcome in ("302", "proxy"):
        return "miss"
    return None


def byte_source(outcome: str) -> str:
    """Whose bytes the client got: "proxy" (streamed from the upstream) or "local"."""
    return "proxy" if outcome == "proxy" else "local"


def hour_of(moment: float) -> int:
    """The start of the hour (Unix time) that ``moment`` falls in."""
    return int(moment) // HOUR * HOUR


@dataclass
class HourTraffic:
    """One hour's answers. Hit rate by bytes counts the bytes the mirror sent: local ones
    against proxied ones (a 302 sends none through the mirror; it counts by requests)."""

    hour: int
    requests: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0
    miss_bytes: int = 0
    proxy_bytes: int = 0

    def add(self, route: str, outcome: str, status: int, requests: int, size: int) -> None:
        self.requests += requests
        self.bytes += size
        if outcome == "proxy":
            self.proxy_bytes += size
        result = file_result(route, outcome, status)
        if result == "hit":
            self.hits += requests
            self.hit_bytes += size
        elif result == "miss":
            self.misses += requests
            self.miss_bytes += size

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None

    @property
    def byte_hit_rate(self) -> float | None:
        total = self.hit_bytes + self.miss_bytes
        return self.hit_bytes / total if total else None


def hourly(
    rows: Iterable[tuple[int, str, str, int, int, int]], first_hour: int, last_hour: int
) -> list[HourTraffic]:
    """Every hour from ``first_hour`` to ``last_hour`` (empty hours included), summed from
    (hour, route, outcome, status, requests, bytes) rows."""
    hours = {hour: HourTraffic(hour) for hour in range(first_hour, last_hour + 1, HOUR)}
    for hour, route, outcome, status, requests, size in rows:
        entry = hours.get(hour)
        if entry is not None:
            entry.add(route, outcome, status, requests, size)
    return list(hours.values())


def total(hours: Iterable[HourTraffic]) -> HourTraffic:
    """The sum of several hours (``hour`` is the first one's)."""
    result: HourTraffic | None = None
    for entry in hours:
        if result is None:
            result = HourTraffic(entry.hour)
        result.requests += entry.requests
        result.bytes += entry.bytes
        result.hits += entry.hits
        result.misses += entry.misses
        result.hit_bytes += entry.hit_bytes
        result.miss_bytes += entry.miss_bytes
        result.proxy_bytes += entry.proxy_bytes
    return result or HourTraffic(0)
