"""``pypi-mirror status``: the status page's facts in the terminal (from the database and the
config; the server need not run). Strings from the database are printed as plain text,
never as rich markup."""

from __future__ import annotations

import time

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pypi_mirror.cache.report import format_size
from pypi_mirror.config import Config
from pypi_mirror.db import STORE_ERRORS, Database
from pypi_mirror.progress import format_duration
from pypi_mirror.status import (
    Status,
    describe_run,
    format_age,
    format_share,
    format_time,
    read_status,
    status_json,
)
from pypi_mirror.traffic import HourTraffic, total

SPARK = "▁▂▃▄▅▆▇█"
RECENT_HOURS = 24


def sparkline(shares: list[float | None]) -> str:
    """One character per hour: the share as a bar height, a space where there is none."""
    return "".join(
        " " if share is None else SPARK[min(int(share * len(SPARK)), len(SPARK) - 1)]
        for share in shares
    )


def _pairs(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="dim")
    table.add_column()
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def _traffic_rows(label: str, hours: list[HourTraffic]) -> list[tuple[str, str]]:
    sums = total(hours)
    return [
        (f"{label}: requests", f"{sums.requests:,} ({format_size(sums.bytes)} sent)"),
        (f"{label}: file hits / misses", f"{sums.hits:,} / {sums.misses:,}"),
        (
            f"{label}: hit rate",
            f"{format_share(sums.hit_rate)} by requests, "
            f"{format_share(sums.byte_hit_rate)} by bytes",
        ),
    ]


def render(status: Status, console: Console) -> None:
    facts = status.facts
    run = facts.last_run
    index = [
        ("Serial", "none yet" if facts.serial is None else f"{facts.serial:,}"),
        ("Last successful sync", format_age(facts.sync_age)),
    ]
    if run is None:
        index.append(("Last sync", "never: run `pypi-mirror sync`"))
    else:
        index += [
            ("Last sync", f"{format_time(run.finished)} ({format_age(facts.now - run.finished)})"),
            ("Its result", f"{run.result}, in {format_duration(run.seconds)}"),
            ("Its counts", describe_run(run)),
        ]
    console.print(_pairs("Index", index))

    tiers = Table(title="Cache tiers", title_justify="left")
    for column in ("Tier", "Path", "Files", "Used", "Limit", "Share"):
        tiers.add_column(column, justify="left" if column == "Path" else "right")
    for tier in facts.tiers:
        tiers.add_row(
            str(tier.index),
            Text(tier.path),
            f"{tier.files:,}",
            format_size(tier.bytes),
            format_size(tier.limit),
            format_share(tier.share),
        )
    console.print(tiers)

    recent = status.hours[-RECENT_HOURS:]
    days = status.window / 86400
    traffic = _traffic_rows(f"last {days:g} days", status.hours)
    traffic += _traffic_rows(f"last {len(recent)} h", recent)
    traffic.append(
        (f"hit rate per hour, last {len(recent)} h", sparkline([h.hit_rate for h in recent]))
    )
    console.print(_pairs("Traffic (files: hit = from a tier, miss = 302 or proxy)", traffic))

    projects = Table(title="Most-voted projects", title_justify="left")
    projects.add_column("Project")
    projects.add_column("Votes", justify="right")
    for name, votes in status.top_projects[:10]:
        projects.add_row(Text(name), f"{votes:,}")
    if status.top_projects:
        console.print(projects)
    else:
        console.print("Most-voted projects: no votes in the window yet")

    runs = Table(title="Recent sync runs", title_justify="left")
    for column in ("Started", "Duration", "Result", "Summary"):
        runs.add_column(column)
    for entry in status.runs:
        runs.add_row(
            format_time(entry.started),
            format_duration(entry.seconds),
            Text(entry.result),
            Text(describe_run(entry)),
        )
    if status.runs:
        console.print(runs)
    else:
        console.print("Recent sync runs: none yet")


def print_status(config: Config, *, as_json: bool = False, console: Console | None = None) -> int:
    """Print the status; 0, or 1 when there is no database to read."""
    console = console or Console()
    store = config.store
    if store.sqlite_path is not None and not store.sqlite_path.exists():
        console.print(Text(f"no database at {store.sqlite_path}: the mirror has not run here yet"))
        return 1
    try:
        db = Database(store, "status")
        try:
            status = read_status(config, db, time.time())
        finally:
            db.close()
    except STORE_ERRORS as error:
        console.print(Text(f"cannot read the database ({store.display}): {error}"))
        return 1
    if as_json:
        print(orjson.dumps(status_json(status), option=orjson.OPT_INDENT_2).decode())
        return 0
    console.print(Text(f"pypi-mirror status: {config.repo_path}", style="bold"))
    render(status, console)
    return 0
