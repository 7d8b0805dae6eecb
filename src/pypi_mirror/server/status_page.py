"""The status page at ``{prefix}/``: one HTML document with inline SVG charts, no script and
nothing from another host (it works offline and under a strict Content-Security-Policy);
the same facts as JSON for ``Accept: application/json``.

Every string shown goes through ``html.escape`` (paths, project names, failure messages).
"""

from __future__ import annotations

from html import escape

import orjson

from pypi_mirror import __version__
from pypi_mirror.cache.report import format_size
from pypi_mirror.progress import format_duration
from pypi_mirror.server.http import Response
from pypi_mirror.server.svgchart import Series, line_chart, stacked_bars
from pypi_mirror.status import (
    Status,
    describe_run,
    format_age,
    format_share,
    format_time,
    status_json,
)

# Inline style only: the page loads nothing, anywhere.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"
HIT = "#2a7ab0"
MISS = "#e08a2c"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 60em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 1em 0 0 0; font-weight: 600; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.25em 0.6em 0.25em 0; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #666; }
.ok { color: #1a7f37; } .failed { color: #c62828; } .interrupted { color: #b26a00; }
.bar { background: #eee; width: 8em; height: 0.8em; display: inline-block; }
.bar span { background: #2a7ab0; height: 100%; display: block; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
dt { color: #555; } dd { margin: 0; }
svg.chart { max-width: 720px; display: block; margin: 0.6em 0; }
"""


def _e(value: object) -> str:
    return escape(str(value))


def _index(status: Status) -> list[str]:
    facts = status.facts
    run = facts.last_run
    rows = [
        ("Serial", "none yet" if facts.serial is None else f"{facts.serial:,}"),
        ("Last successful sync", format_age(facts.sync_age)),
    ]
    if run is None:
        rows.append(("Last sync", "never: run `pypi-mirror sync`"))
    else:
        rows += [
            ("Last sync", f"{format_time(run.finished)} ({format_age(facts.now - run.finished)})"),
            ("Its result", run.result),
            ("Its duration", format_duration(run.seconds)),
            ("Its counts", describe_run(run)),
        ]
    lines = ["<h2>Index</h2>", '<dl id="index">']
    for name, value in rows:
        css = f' class="{_e(value)}"' if name == "Its result" else ""
        lines.append(f"<dt>{_e(name)}</dt><dd{css}>{_e(value)}</dd>")
    lines.append("</dl>")
    return lines


def _tiers(status: Status) -> list[str]:
    lines = [
        "<h2>Cache tiers</h2>",
        '<table id="tiers"><tr><th>Tier</th><th>Path</th><th class="n">Files</th>'
        '<th class="n">Used</th><th class="n">Limit</th><th>Share</th></tr>',
    ]
    for tier in status.facts.tiers:
        width = min(tier.share, 1.0) * 100
        lines.append(
            f'<tr><td>{tier.index}</td><td>{_e(tier.path)}</td><td class="n">{tier.files:,}</td>'
            f'<td class="n">{_e(format_size(tier.bytes))}</td>'
            f'<td class="n">{_e(format_size(tier.limit))}</td>'
            f'<td><span class="bar"><span style="width:{width:.1f}%"></span></span> '
            f"{_e(format_share(tier.share))}</td></tr>"
        )
    lines.append("</table>")
    lines.append('<p class="muted">As the last sync recorded them (its inventory).</p>')
    return lines


def _traffic(status: Status) -> list[str]:
    totals = status.totals
    hours = [entry.hour for entry in status.hours]
    days = status.window / 86400
    span = f"{days:g} days" if days >= 1 else format_duration(status.window)
    rows = [
        ("Requests", f"{totals.requests:,}"),
        ("File hits / misses", f"{totals.hits:,} / {totals.misses:,}"),
        ("Hit rate by requests", format_share(totals.hit_rate)),
        ("Hit rate by bytes", format_share(totals.byte_hit_rate)),
        ("Bytes sent", f"{format_size(totals.bytes)} ({format_size(totals.proxy_bytes)} proxied)"),
    ]
    lines = [f"<h2>Traffic, last {_e(span)} (hourly, UTC)</h2>", '<dl id="traffic">']
    lines += [f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in rows]
    lines.append("</dl>")
    lines.append("<h3>File hit rate per hour</h3>")
    lines.append(
        line_chart(
            "File hit rate per hour",
            hours,
            [
                Series("by requests", [entry.hit_rate for entry in status.hours], HIT),
                Series("by bytes", [entry.byte_hit_rate for entry in status.hours], MISS, True),
            ],
        )
    )
    lines.append("<h3>File requests per hour</h3>")
    lines.append(
        stacked_bars(
            "File requests per hour",
            hours,
            [
                ("hits", [entry.hits for entry in status.hours], HIT),
                ("misses (302, proxy)", [entry.misses for entry in status.hours], MISS),
            ],
        )
    )
    lines.append(
        '<p class="muted">A hit is a file answered from a cache tier (revalidations included); '
        "a miss is sent to the upstream. By bytes: bytes sent from the tiers against bytes "
        "proxied (a 302 sends none through the mirror).</p>"
    )
    return lines


def _projects(status: Status) -> list[str]:
    lines = ["<h2>Most-voted projects</h2>"]
    if not status.top_projects:
        return [*lines, '<p class="muted">No votes in the window yet.</p>']
    lines.append('<table id="projects"><tr><th>Project</th><th class="n">Votes</th></tr>')
    lines += [
        f'<tr><td>{_e(name)}</td><td class="n">{votes:,}</td></tr>'
        for name, votes in status.top_projects
    ]
    lines.append("</table>")
    return lines


def _runs(status: Status) -> list[str]:
    lines = ["<h2>Recent sync runs</h2>"]
    if not status.runs:
        return [*lines, '<p class="muted">No sync has run yet.</p>']
    lines.append(
        '<table id="runs"><tr><th>Started</th><th class="n">Duration</th><th>Result</th>'
        "<th>Summary</th></tr>"
    )
    for run in status.runs:
        lines.append(
            f"<tr><td>{_e(format_time(run.started))}</td>"
            f'<td class="n">{_e(format_duration(run.seconds))}</td>'
            f'<td class="{_e(run.result)}">{_e(run.result)}</td>'
            f"<td>{_e(describe_run(run))}</td></tr>"
        )
    lines.append("</table>")
    return lines


def render_html(status: Status) -> bytes:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no /favicon.ico request
        "<title>pypi-mirror status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>pypi-mirror status</h1>",
        f'<p class="muted">pypi-mirror {_e(__version__)}, {_e(format_time(status.facts.now))}. '
        'Also: <a href="?format=json">JSON</a>; /metrics, /health, /ready.</p>',
        *_index(status),
        *_tiers(status),
        *_traffic(status),
        *_projects(status),
        *_runs(status),
        "</body></html>",
    ]
    return "\n".join(parts).encode()


def wants_json(accept: str | None, query: str) -> bool:
    return "format=json" in query or "application/json" in (accept or "")


def answer(status: Status, as_json: bool) -> Response:
    headers = [("Cache-Control", "no-store"), ("Vary", "Accept")]
    if as_json:
        body = orjson.dumps(status_json(status))
        return Response(200, [("Content-Type", "application/json"), *headers], body)
    return Response(
        200,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Security-Policy", POLICY),
            ("X-Content-Type-Options", "nosniff"),
            *headers,
        ],
        render_html(status),
    )
