"""``/metrics``: Prometheus values summed over every worker process.

prometheus-client's multiprocess mode: each worker writes its values to memory-mapped files in
``{repo_path}/.metrics/`` and the worker that answers a scrape reads them all. The master
empties the folder before it forks (``prepare_metrics_dir``) and forgets a dead worker's live
gauges (``forget_worker``); counters of dead workers stay, so totals never go down.

Workers never touch these values on the request path: ``WorkerMetrics.flush`` moves a
second's worth of ``RequestTally`` counts into them at once. Facts that live in the database
or the config (tiers, serial, last sync) and the hit ratios are computed by the scraping
worker, at scrape time.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pypi_mirror import __version__
from pypi_mirror.server.tally import LATENCY_BOUNDS, UPSTREAM_BOUNDS, RequestTally
from pypi_mirror.traffic import byte_source, file_result, outcome_label

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pypi_mirror.cache.votes import VoteRecorder
    from pypi_mirror.server.ondemand import OnDemandIndex
    from pypi_mirror.status import Facts

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "pypi_mirror_"


def prepare_metrics_dir(folder: Path) -> Path:
    """Empty ``folder`` (``Repo.metrics_dir``) and select multiprocess mode, before any worker
    starts (the values of an earlier run would otherwise be summed into this one's)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
    # prometheus_client picks its value class when first imported; it may have been imported
    # before the variable was set (by a test, say), so choose again explicitly.
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()
    return folder


def forget_worker(pid: int) -> None:
    """A worker exited: drop its live gauges (vote queue depth); its counters remain."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _add_histogram(child: Any, counts: list[float]) -> None:
    """Add bucket counts (see tally.new_histogram) to a Histogram child at once. Histogram
    has only ``observe(one_value)``; its per-bucket values (``_buckets``, non-cumulative)
    and ``_sum`` are the documented multiprocess layout, stable since 0.4."""
    for index, count in enumerate(counts[:-1]):
        if count:
            child._buckets[index].inc(count)
    child._sum.inc(counts[-1])


class WorkerMetrics:
    """This worker's Prometheus values, fed from its tally once a second."""

    def __init__(
        self, tally: RequestTally, votes: VoteRecorder, ondemand: OnDemandIndex | None
    ) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.tally = tally
        self.votes = votes
        self.ondemand = ondemand
        self._seen_votes = (0, 0)
        self._seen_fetches = 0
        # For the hourly table: (route, outcome, status) -> [requests, bytes] since it last
        # took them, by hour (see take_hourly).
        self._hourly: dict[tuple[int, str, str, int], list[int]] = {}

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Any:
            return Counter(PREFIX + name, doc, list(labels), registry=None)

        self.requests = counter(
            "requests", "Answered requests by route and outcome.", ("route", "outcome")
        )
        self.sent_bytes = counter(
            "sent_bytes",
            "Body bytes sent, from local disk or through the proxy.",
            ("route", "source"),
        )
        self.file_requests = counter(
            "file_requests", "File answers: hit (from a tier) or miss (302 or proxy).", ("result",)
        )
        self.file_bytes = counter(
            "file_bytes", "File bytes sent: hit (from a tier) or miss (proxied).", ("result",)
        )
        self.latency = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from a request's first byte to its last answer byte.",
            ["route"],
            buckets=LATENCY_BOUNDS,
            registry=None,
        )
        self.upstream = counter(
            "upstream_requests", "Requests to the upstream by answer class.", ("result",)
        )
        self.upstream_errors = counter(
            "upstream_errors", "Upstream timeouts, connection failures and 5xx.", ("kind",)
        )
        self.upstream_latency = Histogram(
            PREFIX + "upstream_request_duration_seconds",
            "Upstream requests: time until the answer's headers.",
            buckets=UPSTREAM_BOUNDS,
            registry=None,
        )
        self.fetches = counter("ondemand_fetches", "Project pages fetched on demand.")
        self.votes_stored = counter("votes_stored", "Votes stored in the database.")
        self.votes_dropped = counter("votes_dropped", "Votes dropped: the queue was full.")
        self.vote_queue = Gauge(
            PREFIX + "vote_queue_depth",
            "Votes waiting to be stored.",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.database_unreachable = Gauge(
            PREFIX + "database_unreachable",
            "Workers whose vote writer cannot reach the database (votes wait in the buffer).",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.fetches.inc(0)  # present from the start, at zero
        self.votes_stored.inc(0)
        self.votes_dropped.inc(0)

    def flush(self, now: float | None = None) -> None:
        """Move the tally's counts into the Prometheus values (once a second)."""
        taken = self.tally.take()
        hour = int(time.time() if now is None else now) // 3600 * 3600
        hourly = self._hourly
        for (route, outcome, status), (count, size, *_latency) in taken.requests.items():
            count, size = int(count), int(size)
            self.requests.labels(route, outcome_label(outcome, status)).inc(count)
            if size:
                self.sent_bytes.labels(route, byte_source(outcome)).inc(size)
            result = file_result(route, outcome, status)
            if result is not None:
                self.file_requests.labels(result).inc(count)
                self.file_bytes.labels(result).inc(size)
            entry = hourly.get((hour, route, outcome, status))
            if entry is None:
                hourly[(hour, route, outcome, status)] = [count, size]
            else:
                entry[0] += count
                entry[1] += size
        for route, counts in taken.latency().items():
            _add_histogram(self.latency.labels(route), counts)
        for result, count in taken.upstream.items():
            self.upstream.labels(result).inc(count)
            if result in ("timeout", "error", "5xx"):
                kind = {"error": "connection"}.get(result, result)
                self.upstream_errors.labels(kind).inc(count)
        if taken.upstream:
            _add_histogram(self.upstream_latency, taken.upstream_latency)
        stored, dropped = self.votes.stored, self.votes.dropped
        self.votes_stored.inc(stored - self._seen_votes[0])
        self.votes_dropped.inc(dropped - self._seen_votes[1])
        self._seen_votes = (stored, dropped)
        self.vote_queue.set(self.votes.pending)
        self.database_unreachable.set(0 if self.votes.unreachable is None else 1)
        if self.ondemand is not None:
            fetches = self.ondemand.fetches
            self.fetches.inc(fetches - self._seen_fetches)
            self._seen_fetches = fetches

    def take_hourly(self) -> list[tuple[int, str, str, int, int, int]]:
        """(hour, route, outcome, status, requests, bytes) counted since the last call."""
        taken, self._hourly = self._hourly, {}
        return [(*key, count, size) for key, (count, size) in taken.items()]

    def give_back(self, rows: list[tuple[int, str, str, int, int, int]]) -> None:
        """Rows that could not be stored: counted again with the next ones."""
        for hour, route, outcome, status, count, size in rows:
            entry = self._hourly.setdefault((hour, route, outcome, status), [0, 0])
            entry[0] += count
            entry[1] += size


# -- the scrape -----------------------------------------------------------------------------


def _sample_sum(families: list[Metric], name: str, **labels: str) -> float:
    total = 0.0
    for family in families:
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else float("nan")


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def scrape_families(families: list[Metric], facts: Facts | None) -> Iterator[Metric]:
    """The values computed at scrape time: hit ratios from the summed counters, and what the
    database and config say (``facts``; None when the database cannot be read)."""
    ratio = _gauge(
        "file_hit_ratio",
        "Share of file answers from a tier since the server started, by requests or by bytes "
        "(bytes: local against proxied; a 302 sends none). NaN before the first file answer.",
        ("by",),
    )
    for by, name in (("requests", "file_requests_total"), ("bytes", "file_bytes_total")):
        hits = _sample_sum(families, PREFIX + name, result="hit")
        misses = _sample_sum(families, PREFIX + name, result="miss")
        ratio.add_metric([by], _ratio(hits, hits + misses))
    yield ratio
    info = _gauge("info", "The running version.", ("version",))
    info.add_metric([__version__], 1)
    yield info
    if facts is None:
        return
    used = _gauge("tier_used_bytes", "Bytes of cached files per tier.", ("tier", "path"))
    files = _gauge("tier_files", "Cached files per tier.", ("tier", "path"))
    limit = _gauge("tier_limit_bytes", "Size limit of each tier (config).", ("tier", "path"))
    for tier in facts.tiers:
        labels = [str(tier.index), tier.path]
        used.add_metric(labels, tier.bytes)
        files.add_metric(labels, tier.files)
        limit.add_metric(labels, tier.limit)
    yield from (used, files, limit)
    if facts.serial is not None:
        serial = _gauge("index_serial", "The upstream serial the root index is at.")
        serial.add_metric([], facts.serial)
        yield serial
    if facts.last_success is not None:
        finished = facts.last_success.finished
        success = _gauge(
            "last_successful_sync_timestamp_seconds", "When the last successful sync ended."
        )
        success.add_metric([], finished)
        age = _gauge("last_successful_sync_age_seconds", "Seconds since the last successful sync.")
        age.add_metric([], max(0.0, facts.now - finished))
        yield from (success, age)
    run = facts.last_run
    if run is None:
        return
    ended = _gauge("last_sync_timestamp_seconds", "When the last sync ended.")
    ended.add_metric([], run.finished)
    ok = _gauge("last_sync_success", "1 when the last sync succeeded, else 0.")
    ok.add_metric([], 1 if run.result == "ok" else 0)
    duration = _gauge("last_sync_duration_seconds", "How long the last sync ran.")
    duration.add_metric([], run.finished - run.started)
    yield from (ended, ok, duration)
    for family, doc, keys in (
        ("projects", "Projects of the last sync by kind.", run.project_counts()),
        ("files", "Cached files of the last sync by kind.", run.file_counts()),
        ("bytes", "Cached bytes of the last sync by kind.", run.byte_counts()),
    ):
        gauge = _gauge(f"last_sync_{family}", doc, ("kind",))
        for kind, value in keys.items():
            gauge.add_metric([kind], value)
        yield gauge


def render(facts: Facts | None, folder: str | None = None) -> bytes:
    """The text exposition: every worker's values summed, then the scrape-time ones."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    path = folder or os.environ.get(ENV)
    summed = list(MultiProcessCollector(None, path=path).collect()) if path else []
    everything = summed + list(scrape_families(summed, facts))

    class _Collected:
        def collect(self) -> Iterable[Metric]:
            return everything

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected())  # type: ignore[arg-type]
    return generate_latest(registry)
