"""Per-worker counters in plain Python, filled on the request path and emptied once a second
into the Prometheus values (metrics.py) and every few seconds into the hourly table.

Why not the Prometheus objects directly: in multiprocess mode each ``inc`` takes a lock and
writes to a memory-mapped file; a request here costs one tuple, one dict look-up and a few
integer additions (see ``record``), and the once-a-second flush does the rest for every
request of that second at once.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from types import SimpleNamespace
from typing import Any

import aiohttp

from pypi_mirror.server.http import Request

# Request durations, seconds (a handful of buckets: a local hit, a page, a proxied file...).
LATENCY_BOUNDS = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0)
# Upstream answers up to their headers.
UPSTREAM_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def new_histogram(bounds: tuple[float, ...]) -> list[float]:
    """Counts per bucket (the last one is +Inf), then the sum of the observations."""
    return [0] * (len(bounds) + 1) + [0.0]


class RequestTally:
    """What one worker answered since the last ``take``; plus upstream requests."""

    def __init__(self) -> None:
        # (route, outcome, status) -> [requests, bytes, *latency histogram (new_histogram)]
        self.requests: dict[tuple[str, str, int], list[float]] = {}
        # upstream result ("2xx"... "5xx", "timeout", "error") -> count
        self.upstream: dict[str, int] = {}
        self.upstream_latency = new_histogram(UPSTREAM_BOUNDS)

    def record(self, request: Request, status: int, size: int, seconds: float) -> None:
        """One answered request (called once per request, from the access-log callback):
        one dict look-up and four additions."""
        key = (request.route, request.outcome, status)
        counts = self.requests.get(key)
        if counts is None:
            counts = self.requests[key] = [0, 0, *new_histogram(LATENCY_BOUNDS)]
        counts[0] += 1
        counts[1] += size
        counts[2 + bisect_left(LATENCY_BOUNDS, seconds)] += 1
        counts[-1] += seconds

    def latency(self) -> dict[str, list[float]]:
        """The latency histograms (see new_histogram) summed per route."""
        routes: dict[str, list[float]] = {}
        for (route, _outcome, _status), counts in self.requests.items():
            histogram = routes.get(route)
            if histogram is None:
                routes[route] = list(counts[2:])
            else:
                for index, value in enumerate(counts[2:]):
                    histogram[index] += value
        return routes

    def take(self) -> RequestTally:
        """The counts so far, as a tally of their own; this one starts again from zero."""
        taken = RequestTally()
        taken.requests, self.requests = self.requests, taken.requests
        taken.upstream, self.upstream = self.upstream, taken.upstream
        taken.upstream_latency, self.upstream_latency = (
            self.upstream_latency,
            taken.upstream_latency,
        )
        return taken

    # -- the upstream ----------------------------------------------------------------------

    def upstream_answered(self, status: int, seconds: float) -> None:
        result = f"{status // 100}xx" if 100 <= status < 600 else "error"
        self.upstream[result] = self.upstream.get(result, 0) + 1
        histogram = self.upstream_latency
        histogram[bisect_left(UPSTREAM_BOUNDS, seconds)] += 1
        histogram[-1] += seconds

    def upstream_failed(self, error: BaseException, seconds: float) -> None:
        result = "timeout" if isinstance(error, TimeoutError) else "error"
        self.upstream[result] = self.upstream.get(result, 0) + 1
        histogram = self.upstream_latency
        histogram[bisect_left(UPSTREAM_BOUNDS, seconds)] += 1
        histogram[-1] += seconds

    def trace_config(self) -> aiohttp.TraceConfig:
        """Counts every request of an aiohttp session (on-demand pages, metadata, proxying,
        the readiness probe) without touching its callers: latency is up to the answer's
        headers; connection failures and timeouts are errors."""
        trace = aiohttp.TraceConfig()

        async def started(_session: Any, context: SimpleNamespace, _params: Any) -> None:
            context.started = time.monotonic()

        async def ended(
            _session: Any, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
        ) -> None:
            self.upstream_answered(params.response.status, time.monotonic() - context.started)

        async def failed(
            _session: Any, context: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
        ) -> None:
            self.upstream_failed(params.exception, time.monotonic() - context.started)

        trace.on_request_start.append(started)
        trace.on_request_end.append(ended)
        trace.on_request_exception.append(failed)
        return trace
