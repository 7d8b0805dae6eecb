"""Sampling one of our workers with py-spy while wrk runs, and a short text summary of where
the time went (own time and inclusive time per function)."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path


def start_recording(py_spy: str, pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """py-spy in raw (collapsed stacks) form; --nonblocking so the worker is never paused."""
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "250",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frame_name(frame: str) -> str:
    # py-spy writes "function (path/to/file.py:line)"; keep the function and the file's name.
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{name} ({file})" if file else name


def summarize(raw: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # The first frame is the thread ("thread (0x…)"): skip it for function totals.
        functions = [f for f in frames if not f.startswith(("thread ", "process "))]
        if not functions:
            continue
        total += count
        own[functions[-1]] += count
        for name in set(functions):
            inclusive[name] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
