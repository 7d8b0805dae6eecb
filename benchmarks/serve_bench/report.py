"""The markdown tables: per test the median of each server over the rounds, and the ratio
to nginx (the median of the per-round ratios: each round measures both servers back to back,
so a ratio is less disturbed by whatever else the machine does than either number)."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from serve_bench.load import LoadResult
from serve_bench.tree import Target


@dataclass
class Row:
    target: Target
    nginx: list[LoadResult] = field(default_factory=list)
    mirror: list[LoadResult] = field(default_factory=list)


def value_of(target: Target, result: LoadResult) -> float:
    if target.unit == "MB/s":
        return result.megabytes_per_second
    return result.requests_per_second


def table(rows: list[Row]) -> str:
    lines = [
        "| test | nginx | pypi-mirror | ratio | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        target = row.target
        theirs = [value_of(target, r) for r in row.nginx]
        ours = [value_of(target, r) for r in row.mirror]
        ratios = [o / t for o, t in zip(ours, theirs, strict=False) if t]
        ratio = ""
        verdict = f"≥ {target.goal:.1f}×"
        if ratios:
            share = median(ratios)
            ratio = f"{share:.2f}×"
            if len(ratios) > 1:
                ratio += f" ({min(ratios):.2f}–{max(ratios):.2f})"
            verdict += " ok" if share >= target.goal else " MISSED"
        lines.append(
            f"| {target.label} ({target.unit}) | {_number(theirs)} | {_number(ours)} | "
            f"{ratio} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def details(rows: list[Row]) -> str:
    lines = [
        "| test | server | round | requests | MB/s | server CPU µs/req | p50 ms | p99 ms "
        "| status ≥ 400 | socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for name, results in (("nginx", row.nginx), ("pypi-mirror", row.mirror)):
            for number, result in enumerate(results, 1):
                lines.append(
                    f"| {row.target.key} | {name} | {number} | {result.requests:,} | "
                    f"{result.megabytes_per_second:,.0f} | {result.cpu_us_per_request:,.0f} | "
                    f"{result.p50_ms:.2f} | "
                    f"{result.p99_ms:.2f} | {result.bad_status} | {result.socket_errors} |"
                )
    return "\n".join(lines) + "\n"


def _number(values: list[float]) -> str:
    return "-" if not values else f"{median(values):,.0f}"
