"""Progress of long runs: a rich progress bar on a terminal, a log line every few seconds
otherwise (cron, systemd), so an operator always sees that a sync is alive and how far it got.

Usage (from async or plain code, any thread)::

    with Progress("index sync", total=len(plan), unit="projects") as progress:
        for ...:
            progress.advance()
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0


def format_duration(seconds: float) -> str:
    """``3725.2`` → ``1h02m05s``; short runs keep a decimal (``4.2s``)."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"-- {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


class Progress:
    """Counts work done out of a total and shows it; thread-safe ``advance``.

    ``bar``: None picks the bar when ``stream`` (default stderr) is a terminal.
    """

    def __init__(
        self,
        description: str,
        total: int,
        *,
        unit: str = "items",
        interval: float = LOG_INTERVAL,
        bar: bool | None = None,
        stream: IO[str] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.interval = interval
        self.done = 0
        self._stream = stream or sys.stderr
        self._bar = self._stream.isatty() if bar is None else bar
        self._log = logger or log
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._rich: RichProgress | None = None
        self._task: Any = None
        self._swapped: list[logging.StreamHandler[Any]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        if self._bar:
            self._start_bar()
        else:
            self._ticker = threading.Thread(
                target=self._tick, name=f"progress:{self.description}", daemon=True
            )
            self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._rich is not None:
            self._rich.stop()
            for handler in self._swapped:
                handler.setStream(self._stream)
            self._swapped.clear()
            self._rich = None
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
            self._log.info("%s", self.line(final=True))

    # -- counting --------------------------------------------------------------------------

    def advance(self, count: int = 1) -> None:
        with self._lock:
            self.done += count
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, *, final: bool = False) -> str:
        """``index sync: 1,200/50,000 projects (2.4%), 410/s, ETA 1m59s``; with no known
        total (0) just ``listing: 120,000 projects, 41,000/s``."""
        done, total, rate = self.done, self.total, self.rate
        if total > 0:
            count = f"{done:,}/{total:,} {self.unit} ({done / total:.1%})"
        else:
            count = f"{done:,} {self.unit}"
        text = f"{self.description}: {count}, {rate:,.0f}/s"
        if final:
            return f"{text}, {format_duration(self.elapsed)}"
        if rate > 0 and total > done:
            text += f", ETA {format_duration((total - done) / rate)}"
        return text

    # -- display ---------------------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._log.info("%s", self.line())

    def _start_bar(self) -> None:
        console = Console(file=self._stream)
        self._rich = RichProgress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _RateColumn(self.unit),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            redirect_stderr=True,
            redirect_stdout=True,
        )
        # No total: rich shows a pulsing bar.
        self._task = self._rich.add_task(self.description, total=self.total or None)
        self._rich.start()
        # Log records written to the real stderr would tear the bar; send them through
        # rich's proxy (which prints them above the bar) while it is shown.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._stream:
                handler.setStream(sys.stderr)
                self._swapped.append(handler)
