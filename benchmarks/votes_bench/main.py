"""Vote ingest: two real `pypi-mirror serve` nodes on one repository and one store, file GETs
from pip through both at once, every one a vote; how many are served, accepted, stored.

For each backend (SQLite: both nodes share the embedded file, as nodes on one host may;
PostgreSQL: a server of the benchmark's own with durable settings, both nodes on one database)
two nodes start, each with its own config.yaml and port, on the same ``repo_path`` whose tier
holds a few small files (every GET is a local hit). A random client address per request
(X-Forwarded-For from the trusted 127.0.0.1, spread over ~14.6 M /24 prefixes) makes every
request a distinct (file, prefix) pair, so every one is stored: with ``--dedup-window`` above 0
(the default, 5m, as in production) through the dedup upsert of ``vote_last`` then COPY; with
0 straight by COPY. wrk drives each node for ``--duration`` seconds; then the nodes'
vote buffers are watched (/metrics) until they are empty and the rows are counted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_pg import BenchPostgres
from pgserver import free_port
from serve_bench.load import REPORT_LUA, USER_AGENT
from serve_bench.servers import Server

HERE = Path(__file__).resolve().parent.parent
WORK = HERE / ".work" / "votes"
FILES = 16
FILE_SIZE = 4096
URL_PREFIX = "/pypi"
DRAIN_TIMEOUT = 300.0

CONFIG = """\
# Written by benchmarks/votes: node {node}. pypi_url points at a closed loopback port (nothing
# is fetched: every request is a file in the tier).
listen: "127.0.0.1:{port}"
repo_path: {repo}
prefix: {url_prefix}
workers: {workers}
trusted_proxies:
  - 127.0.0.1/32
upstream:
  pypi_url: http://127.0.0.1:9/pypi
  packages_url: http://127.0.0.1:9
  redirect_url: http://127.0.0.1:9
fallback:
  default: "302"
cache:
  dedup_window: {dedup_window}
  tiers:
    - path: {repo}/tier0
      size_limit: 10g
log:
  path: ""
{database}"""

# A random client address per request: one of 223 × 256 × 256 /24 prefixes. Each wrk thread
# seeds its own generator (the node number and thread number are mixed in).
REQUEST_LUA = """\
local paths = {{{paths}}}
local count = #paths
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
init = function(args)
  math.randomseed(os.time() * 1000 + tonumber(args[1]) * 100 + (seed or 0))
end
request = function()
  local address = math.random(1, 223) .. "." .. math.random(0, 255) .. "." ..
    math.random(0, 255) .. "." .. math.random(1, 254)
  return wrk.format("GET", paths[math.random(count)],
    {{["User-Agent"] = "{user_agent}", ["X-Forwarded-For"] = address}})
end
"""


class Node(Server):
    def __init__(self, prefix: Path, port: int, *, python: str, config: str, name: str) -> None:
        super().__init__(prefix, port)
        self.python = python
        self.config = config
        self.name = name

    def command(self) -> list[str]:
        return [self.python, "-m", "pypi_mirror", "serve", "-c", str(self.prefix / "config.yaml")]

    def prepare(self) -> None:
        (self.prefix / "config.yaml").write_text(self.config)


def file_paths() -> list[str]:
    paths = []
    for n in range(FILES):
        digest = hashlib.sha256(f"votes-bench-{n}".encode()).hexdigest()
        name = f"votebench{n}-1.0-py3-none-any.whl"
        paths.append(f"{digest[:2]}/{digest[2:4]}/{digest[4:]}/{name}")
    return paths


def build_repo(repo: Path) -> list[str]:
    paths = file_paths()
    for path in paths:
        full = repo / "tier0" / path
        if not full.exists():
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_bytes(b"\0" * FILE_SIZE)
    return [f"{URL_PREFIX}/packages/{p}" for p in paths]


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(node: Node) -> dict[str, float]:
    with urllib.request.urlopen(node.base_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        "stored": metric_sum(text, "pypi_mirror_votes_stored_total"),
        "dropped": metric_sum(text, "pypi_mirror_votes_dropped_total"),
        "queue": metric_sum(text, "pypi_mirror_vote_queue_depth"),
        "unreachable": metric_sum(text, "pypi_mirror_database_unreachable"),
        "file_hits": metric_sum(text, "pypi_mirror_file_requests_total"),
    }


class RowCounter:
    """Counts the rows of ``votes`` (a connection of its own)."""

    def __init__(self, backend: str, repo: Path, url: str | None) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.conn = sqlite3.connect(str(repo / "pypi-mirror.db"), timeout=60)
        else:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)

    def votes(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def vote_last(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM vote_last").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


@dataclass
class Result:
    backend: str
    workers: int
    seconds: float = 0.0
    requests: int = 0
    bad: int = 0
    socket_errors: int = 0
    accepted: int = 0
    dropped: int = 0
    stored_metric: int = 0
    rows: int = 0
    rows_in_load: int = 0  # rows counted when the load ended
    vote_last_rows: int = 0
    drain_seconds: float = 0.0
    peak_queue: float = 0.0
    node_cpu: float = 0.0
    db_cpu: float = 0.0
    p99_ms: list[float] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    note: str = ""  # the database server's settings

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def stored_per_s_load(self) -> float:
        return self.rows_in_load / self.seconds

    @property
    def stored_per_s_total(self) -> float:
        return self.rows / (self.seconds + self.drain_seconds)


def run_wrk(
    wrk: str, node: Node, script: Path, seconds: int, connections: int, number: int
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            node.base_url,
            "--",
            str(number),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wrk_result(process: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = process.communicate()
    for line in out.splitlines():
        if line.startswith("WRK-JSON "):
            return json.loads(line[len("WRK-JSON ") :])
    raise RuntimeError(f"wrk gave no result:\n{out}")


def run_backend(args: argparse.Namespace, backend: str, wrk: str) -> Result:
    python = sys.executable
    repo = WORK / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    urls = build_repo(repo)
    server: BenchPostgres | None = None
    url: str | None = None
    for suffix in ("", "-wal", "-shm"):
        (repo / f"pypi-mirror.db{suffix}").unlink(missing_ok=True)
    if backend == "postgresql":
        server = BenchPostgres("votes-pg", WORK)
        server.start(log=lambda line: print(line, flush=True))
        url = server.fresh_database("votes")
        result_note = server.note
    sys.path.insert(0, str(HERE.parent / "src"))
    from pypi_mirror.db import Database
    from pypi_mirror.db.location import parse_database_url

    Database.open(parse_database_url(url, repo)).close()  # the schema, by the program's code
    database = f'database:\n  url: "{url}"\n' if url else ""
    nodes = []
    result = Result(backend, args.workers)
    if server is not None:
        result.note = result_note
    counter: RowCounter | None = None
    wrks: list[subprocess.Popen[str]] = []
    try:
        for number in (1, 2):
            port = free_port()
            config = CONFIG.format(
                node=number,
                port=port,
                repo=repo,
                url_prefix=URL_PREFIX,
                workers=args.workers,
                database=database,
                dedup_window=args.dedup_window,
            )
            node = Node(
                WORK / f"node{number}", port, python=python, config=config, name=f"node {number}"
            )
            node.start("/health")
            nodes.append(node)
        lua = REQUEST_LUA.format(
            paths=", ".join(f'"{u}"' for u in urls), user_agent=USER_AGENT.replace('"', '\\"')
        )
        script = WORK / "votes.lua"
        script.write_text(lua + REPORT_LUA)
        # Warm-up: every node answers a vote request (and opens its store).
        for node in nodes:
            request = urllib.request.Request(
                node.base_url + urls[0],
                headers={"User-Agent": USER_AGENT, "X-Forwarded-For": "192.0.2.1"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200, response.status
                response.read()
        counter = RowCounter(backend, repo, url)
        time.sleep(1.5)  # the warm-up votes stored, the metrics flushed
        before = [scrape(node) for node in nodes]
        rows_before = counter.votes()
        cpu_before = sum(n.cpu_seconds() for n in nodes)
        db_cpu_before = server.cpu_seconds() if server else 0.0
        started = time.perf_counter()
        wrks = [
            run_wrk(wrk, node, script, args.duration, args.connections, number)
            for number, node in enumerate(nodes, 1)
        ]
        # While the load runs: the stored rows over time, and the deepest buffer.
        stop = threading.Event()

        def watch() -> None:
            watcher = RowCounter(backend, repo, url)
            try:
                while not stop.wait(1.0):
                    moment = time.perf_counter() - started
                    result.timeline.append((moment, watcher.votes() - rows_before))
                    with contextlib.suppress(OSError):
                        queue = sum(scrape(node)["queue"] for node in nodes)
                        result.peak_queue = max(result.peak_queue, queue)
            finally:
                watcher.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        loads = [wrk_result(process) for process in wrks]
        ended = time.perf_counter()
        result.rows_in_load = counter.votes() - rows_before
        stop.set()
        watcher.join()
        result.seconds = max(load["duration_us"] for load in loads) / 1e6
        result.requests = sum(load["requests"] for load in loads)
        result.bad = sum(load["status"] for load in loads)
        result.socket_errors = sum(
            load["connect"] + load["read"] + load["write"] + load["timeout"] for load in loads
        )
        result.p99_ms = [load["p99_us"] / 1000 for load in loads]
        # Drained: every node's buffer empty (the gauges are refreshed once a second) and
        # the rows no longer growing; the drain ends when the rows reached their final count.
        polls: list[tuple[float, int]] = []
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            rows = counter.votes() - rows_before
            polls.append((time.perf_counter(), rows))
            queued = sum(scrape(node)["queue"] for node in nodes)
            stable = [n for _t, n in polls if _t >= polls[-1][0] - 1.5]
            if queued == 0 and len(stable) >= 4 and min(stable) == rows:
                break
            time.sleep(0.25)
        else:
            print(f"  {backend}: the vote buffers did not drain within {DRAIN_TIMEOUT:.0f} s")
        final = polls[-1][1]
        reached = next(moment for moment, n in polls if n == final)
        result.drain_seconds = max(0.0, reached - ended)
        time.sleep(1.5)  # one more flush of every worker's counters into /metrics
        after = [scrape(node) for node in nodes]
        result.rows = counter.votes() - rows_before
        result.vote_last_rows = counter.vote_last()
        result.node_cpu = sum(n.cpu_seconds() for n in nodes) - cpu_before
        result.db_cpu = (server.cpu_seconds() if server else 0.0) - db_cpu_before
        stored = sum(a["stored"] - b["stored"] for a, b in zip(after, before, strict=True))
        dropped = sum(a["dropped"] - b["dropped"] for a, b in zip(after, before, strict=True))
        result.stored_metric = int(stored)
        result.dropped = int(dropped)
        # Once drained, every accepted vote is stored: accepted = stored (by the nodes' count).
        result.accepted = int(stored)
        if any(a["unreachable"] for a in after):
            print(f"  {backend}: a node reports the database unreachable")
    finally:
        for process in wrks:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait()
        if counter is not None:
            counter.close()
        for node in nodes:
            node.stop()
        if server is not None:
            server.stop()
    return result


def fmt(value: float) -> str:
    return f"{value:,.0f}"


def ratio(pg: float, lite: float) -> str:
    return f"{pg / lite:.2f}×" if lite else "–"


def report(results: dict[str, Result], args: argparse.Namespace, note: str) -> None:
    backends = list(results)
    print()
    print(
        f"vote ingest: 2 nodes × {args.workers} worker(s), wrk -t1 -c{args.connections} per node, "
        f"{args.duration} s, dedup_window {args.dedup_window}, a random /24 per request "
        f"({os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end)"
    )
    if note:
        print(f"{note}")
    print()
    header = "| | " + " | ".join(backends) + (" | PG / SQLite |" if len(backends) == 2 else " |")
    print(header)
    print("|---|" + "---:|" * len(backends) + ("---:|" if len(backends) == 2 else ""))

    rows: list[tuple[str, Callable[[Result], float]]] = [
        ("serve req/s (both nodes)", lambda r: r.req_per_s),
        ("votes accepted/s", lambda r: r.accepted_per_s),
        ("votes stored/s during the load (rows / load time)", lambda r: r.stored_per_s_load),
        ("votes stored/s overall (rows / (load + drain))", lambda r: r.stored_per_s_total),
        ("votes dropped", lambda r: r.dropped),
        ("rows in votes", lambda r: r.rows),
        ("drain after the load, s", lambda r: r.drain_seconds),
        ("deepest vote buffer (both nodes)", lambda r: r.peak_queue),
        ("serve CPU µs per request (nodes)", lambda r: 1e6 * r.node_cpu / max(r.requests, 1)),
        ("database server CPU µs per vote", lambda r: 1e6 * r.db_cpu / max(r.rows, 1)),
    ]
    for label, get in rows:
        line = f"| {label} | " + " | ".join(
            "–"
            if label.startswith("database") and b == "sqlite"
            else (f"{get(results[b]):.1f}" if label.startswith("drain") else fmt(get(results[b])))
            for b in backends
        )
        if len(backends) == 2:
            both = label.startswith(("database", "votes dropped"))
            line += " | " + (
                "–" if both else ratio(get(results["postgresql"]), get(results["sqlite"]))
            )
        print(line + " |")
    print()
    for backend, r in results.items():
        timeline = ", ".join(
            f"{t:.0f}s:{n:,}" for t, n in r.timeline[:: max(1, len(r.timeline) // 8)]
        )
        print(
            f"{backend}: {r.requests:,} requests in {r.seconds:.1f} s, {r.bad} status ≥ 400, "
            f"{r.socket_errors} socket errors, p99 {', '.join(f'{p:.1f}' for p in r.p99_ms)} ms; "
            f"{r.stored_metric:,} votes stored (metrics), {r.rows:,} new rows in votes, "
            f"{r.vote_last_rows:,} in vote_last; rows stored over time: {timeline}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("-d", "--duration", type=int, default=20, help="seconds of load (20)")
    parser.add_argument("-w", "--workers", type=int, default=1, help="workers per node (1)")
    parser.add_argument(
        "--dedup-window",
        default="5m",
        help="cache.dedup_window of the nodes (5m, the default; 0: no dedup, no upsert)",
    )
    parser.add_argument(
        "-c", "--connections", type=int, default=32, help="wrk connections per node (32)"
    )
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=True)
            wrk = shutil.which("wrk")
        if wrk is None:
            print("wrk is needed: apt-get install wrk")
            return 2
    WORK.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    results: dict[str, Result] = {}
    for backend in backends:
        print(f"{backend}: {args.duration} s of load ...", flush=True)
        results[backend] = run_backend(args, backend, wrk)
    note = " ".join(r.note for r in results.values() if r.note)
    report(results, args, note)
    return 0 if all(r.dropped == 0 and r.bad == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
