"""Small SVG charts drawn on the server (pure functions, no I/O): the status page works
offline, with no script and nothing from another host.

Every string that ends up in the SVG is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH = 720
HEIGHT = 220
LEFT = 52  # room for the y labels
RIGHT = 12
TOP = 12
BOTTOM = 28  # room for the x labels
AXIS = "#666"
GRID = "#ddd"


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]  # None: no value that hour (a gap)
    color: str
    dashed: bool = False


def _x(index: int, count: int) -> float:
    span = WIDTH - LEFT - RIGHT
    return LEFT + (span * (index + 0.5) / count if count else 0)


def _y(value: float, top: float) -> float:
    span = HEIGHT - TOP - BOTTOM
    return TOP + span * (1 - (value / top if top else 0))


def _frame(title: str, y_ticks: Sequence[tuple[float, str]], top: float) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    for value, label in y_ticks:
        y = _y(value, top)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{GRID}"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="{AXIS}">{escape(label)}</text>'
        )
    bottom = HEIGHT - BOTTOM
    parts.append(
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="{AXIS}"/>'
    )
    return parts


def _x_labels(hours: Sequence[int]) -> list[str]:
    """A date under each midnight (UTC), at most about eight of them; the first and last
    hour when the span is short."""
    count = len(hours)
    if not count:
        return []
    marks = [i for i, hour in enumerate(hours) if hour % 86400 == 0]
    fmt = "%m-%d"
    if len(marks) < 2:
        step = max(1, count // 6)
        marks = list(range(0, count, step))
        fmt = "%H:00"
    else:
        marks = marks[:: max(1, math.ceil(len(marks) / 8))]
    parts = []
    for index in marks:
        x = _x(index, count)
        text = datetime.fromtimestamp(hours[index], UTC).strftime(fmt)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 10}" font-size="11" text-anchor="middle" '
            f'fill="{AXIS}">{escape(text)}</text>'
        )
    return parts


def _legend(series: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    x = LEFT + 8
    for label, color in series:
        parts.append(f'<rect x="{x}" y="{TOP + 2}" width="10" height="10" fill="{color}"/>')
        parts.append(
            f'<text x="{x + 14}" y="{TOP + 11}" font-size="11" fill="#333">{escape(label)}</text>'
        )
        x += 24 + 7 * len(label)
    return parts


def line_chart(title: str, hours: Sequence[int], series: Sequence[Series]) -> str:
    """Shares (0..1) per hour as lines in 0-100 %; an hour without a value breaks the line
    and a lone value is drawn as a dot."""
    ticks = [(v / 100, f"{v} %") for v in (0, 25, 50, 75, 100)]
    parts = _frame(title, ticks, 1.0)
    count = len(hours)
    for line in series:
        runs: list[list[tuple[float, float]]] = [[]]
        for index, value in enumerate(line.values):
            if value is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((_x(index, count), _y(min(max(value, 0.0), 1.0), 1.0)))
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        for run in runs:
            if len(run) == 1:
                x, y = run[0]
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{line.color}"/>')
            elif run:
                points = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                parts.append(
                    f'<polyline points="{points}" fill="none" stroke="{line.color}" '
                    f'stroke-width="2"{dash}/>'
                )
    parts += _x_labels(hours)
    parts += _legend([(line.label, line.color) for line in series])
    parts.append("</svg>")
    return "\n".join(parts)


def _nice_step(value: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50... at or above ``value`` (and at least 1)."""
    if value <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return 10.0 * magnitude


def _count(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def stacked_bars(
    title: str, hours: Sequence[int], stacks: Sequence[tuple[str, Sequence[int], str]]
) -> str:
    """Counts per hour as stacked bars: ``stacks`` are (label, values, colour), bottom first."""
    count = len(hours)
    sums = [sum(values[i] for _, values, _ in stacks) for i in range(count)]
    step = _nice_step(max(sums, default=0) / 4)  # four whole steps: no "0.25 requests"
    top = 4 * step
    ticks = [(step * i, _count(step * i)) for i in range(5)]
    parts = _frame(title, ticks, top)
    width = max(1.0, (WIDTH - LEFT - RIGHT) / max(count, 1) - 1)
    for index in range(count):
        base = 0.0
        for _label, values, color in stacks:
            value = values[index]
            if not value:
                continue
            y_top = _y(base + value, top)
            y_base = _y(base, top)
            x = _x(index, count) - width / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{width:.1f}" '
                f'height="{max(y_base - y_top, 0.5):.1f}" fill="{color}"/>'
            )
            base += value
    parts += _x_labels(hours)
    parts += _legend([(label, color) for label, _, color in stacks])
    parts.append("</svg>")
    return "\n".join(parts)
