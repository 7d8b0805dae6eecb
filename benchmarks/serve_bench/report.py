"""The markdown table: each test, nginx, pypi-mirror, and the ratio to nginx."""

from __future__ import annotations

from serve_bench.load import LoadResult
from serve_bench.tree import Target


def value_of(target: Target, result: LoadResult) -> float:
    if target.unit == "MB/s":
        return result.megabytes_per_second
    return result.requests_per_second


def table(rows: list[tuple[Target, LoadResult | None, LoadResult | None]]) -> str:
    lines = [
        "| test | nginx | pypi-mirror | ratio | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for target, nginx, ours in rows:
        theirs_value = value_of(target, nginx) if nginx else None
        ours_value = value_of(target, ours) if ours else None
        ratio = ""
        verdict = f"≥ {target.goal:.1f}×"
        if theirs_value and ours_value is not None:
            share = ours_value / theirs_value
            ratio = f"{share:.2f}×"
            verdict += " ok" if share >= target.goal else " MISSED"
        lines.append(
            f"| {target.label} ({target.unit}) | {_number(theirs_value)} | "
            f"{_number(ours_value)} | {ratio} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def details(rows: list[tuple[Target, LoadResult | None, LoadResult | None]]) -> str:
    lines = [
        "| test | server | requests | MB/s | p50 ms | p99 ms | status ≥ 400 | socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for target, nginx, ours in rows:
        for name, result in (("nginx", nginx), ("pypi-mirror", ours)):
            if result is None:
                continue
            lines.append(
                f"| {target.key} | {name} | {result.requests:,} | "
                f"{result.megabytes_per_second:,.0f} | {result.p50_ms:.2f} | "
                f"{result.p99_ms:.2f} | {result.bad_status} | {result.socket_errors} |"
            )
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
