"""The markdown tables: per test the median of each server over the rounds, and the ratios to
nginx (the median of the per-round ratios: each round measures both servers back to back, so a
ratio is less disturbed by whatever else the machine does than either number).

Two ratios per test: throughput (ours / nginx req/s, or MB/s for the large bodies) and server
CPU (ours / nginx CPU time of the server's processes per request, or per GiB sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from serve_bench.load import LoadResult
from serve_bench.tree import Target

# Our server measured again on the same test without the access log (and without votes):
# variant key → what it is.
VARIANTS = {
    "no-log": "pypi-mirror, access log off",
    "bare": "pypi-mirror, access log off, bandersnatch UA (no vote)",
}
OVERHEAD_LIMIT = 0.10


@dataclass
class Row:
    target: Target
    nginx: list[LoadResult] = field(default_factory=list)
    mirror: list[LoadResult] = field(default_factory=list)
    variants: dict[str, list[LoadResult]] = field(default_factory=dict)


def value_of(target: Target, result: LoadResult) -> float:
    if target.unit == "MB/s":
        return result.megabytes_per_second
    return result.requests_per_second


def cpu_of(target: Target, result: LoadResult) -> float:
    """Server CPU per request (µs) or per GiB sent (s)."""
    if target.unit == "MB/s":
        return result.cpu_seconds_per_gib
    return result.cpu_us_per_request


def cpu_unit(target: Target) -> str:
    return "s/GiB" if target.unit == "MB/s" else "µs/req"


def _ratios(ours: list[float], theirs: list[float]) -> list[float]:
    return [o / t for o, t in zip(ours, theirs, strict=False) if t]


def _ratio_text(ratios: list[float]) -> str:
    if not ratios:
        return ""
    text = f"{median(ratios):.2f}×"
    if len(ratios) > 1:
        text += f" ({min(ratios):.2f}–{max(ratios):.2f})"
    return text


def table(rows: list[Row]) -> str:
    lines = [
        "| test | units | nginx | pypi-mirror | ratio | CPU nginx | CPU ours | CPU ratio | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        target = row.target
        theirs = [value_of(target, r) for r in row.nginx]
        ours = [value_of(target, r) for r in row.mirror]
        cpu_theirs = [cpu_of(target, r) for r in row.nginx]
        cpu_ours = [cpu_of(target, r) for r in row.mirror]
        rates = _ratios(ours, theirs)
        cpus = _ratios(cpu_ours, cpu_theirs)
        verdicts = []
        for goal in target.goals:
            met = goal.met(median(rates) if rates else None, median(cpus) if cpus else None)
            verdicts.append(goal.describe() + ("" if met is None else " ok" if met else " MISSED"))
        digits = 2 if target.unit == "MB/s" else 0
        lines.append(
            f"| {target.key}: {target.label} | {target.unit}, {cpu_unit(target)} | "
            f"{_number(theirs)} | {_number(ours)} | {_ratio_text(rates)} | "
            f"{_number(cpu_theirs, digits)} | {_number(cpu_ours, digits)} | {_ratio_text(cpus)} | "
            f"{'; '.join(verdicts)} |"
        )
    lines += _overhead_lines(rows)
    return "\n".join(lines) + "\n"


def _overhead_lines(rows: list[Row]) -> list[str]:
    """(off − on) / off of our req/s: what the access log (and the votes) cost."""
    lines = []
    for row in rows:
        for variant, what in (("no-log", "access log"), ("bare", "access log + votes")):
            off = [r.requests_per_second for r in row.variants.get(variant, [])]
            on = [r.requests_per_second for r in row.mirror]
            if not off or not on:
                continue
            shares = [(f - n) / f for f, n in zip(off, on, strict=False) if f]
            share = median(shares)
            cpu_off = [r.cpu_us_per_request for r in row.variants[variant]]
            cpu_on = [r.cpu_us_per_request for r in row.mirror]
            verdict = "ok" if share < OVERHEAD_LIMIT else "MISSED"
            spread = f" ({min(shares):.1%}–{max(shares):.1%})" if len(shares) > 1 else ""
            lines.append(
                f"| {row.target.key}: {what} overhead | req/s, µs/req | – | "
                f"{_number(off)} off, {_number(on)} on | {share:.1%}{spread} | – | "
                f"{_number(cpu_off)} off, {_number(cpu_on)} on | "
                f"{_ratio_text(_ratios(cpu_on, cpu_off))} | < {OVERHEAD_LIMIT:.0%} {verdict} |"
            )
    return lines


def details(rows: list[Row]) -> str:
    lines = [
        "| test | server | round | requests | req/s | MB/s | CPU µs/req | CPU s/GiB | p50 ms "
        "| p99 ms | status ≥ 400 | socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = [("nginx", row.nginx), ("pypi-mirror", row.mirror)]
        runs += [(VARIANTS[key], results) for key, results in row.variants.items()]
        for name, results in runs:
            for number, result in enumerate(results, 1):
                lines.append(
                    f"| {row.target.key} | {name} | {number} | {result.requests:,} | "
                    f"{result.requests_per_second:,.0f} | {result.megabytes_per_second:,.0f} | "
                    f"{result.cpu_us_per_request:,.0f} | {result.cpu_seconds_per_gib:.2f} | "
                    f"{result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.bad_status} | "
                    f"{result.socket_errors} |"
                )
    return "\n".join(lines) + "\n"


def _number(values: list[float], digits: int = 0) -> str:
    return "-" if not values else f"{median(values):,.{digits}f}"
