"""Driving wrk and reading its numbers (through a Lua ``done`` hook that prints JSON, rather
than parsing wrk's human-readable units)."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# A pip-like agent: not a bot, so every file request on our server queues a vote.
USER_AGENT = 'pip/24.2 {"installer":{"name":"pip","version":"24.2"}} benchmarks/serve'

REPORT_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    seconds: float
    requests: int
    bytes: int
    socket_errors: int
    bad_status: int  # responses with status > 399, as wrk counts them
    p50_ms: float
    p99_ms: float
    server_cpu: float = 0.0  # CPU seconds the server used during the measurement

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.server_cpu / self.requests if self.requests else 0.0

    @property
    def cpu_seconds_per_gib(self) -> float:
        return self.server_cpu / (self.bytes / 2**30) if self.bytes else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


def run_wrk(
    wrk: str,
    url: str,
    headers: dict[str, str],
    *,
    seconds: float,
    connections: int,
    threads: int,
    script_dir: Path,
    lua: str = "",
    name: str = "report",
) -> LoadResult:
    """One wrk run; ``lua`` (say, a request() function) goes before the reporting hook."""
    script = script_dir / f"{name}.lua"
    text = lua + REPORT_LUA
    if not script.exists() or script.read_text() != text:
        script.write_text(text)
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    for header, value in headers.items():
        command += ["-H", f"{header}: {value}"]
    command.append(url)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRK-JSON "):
            data = json.loads(line[len("WRK-JSON ") :])
            return LoadResult(
                seconds=data["duration_us"] / 1e6,
                requests=data["requests"],
                bytes=data["bytes"],
                socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
                bad_status=data["status"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip()


def fetch(base_url: str, path: str, headers: dict[str, str], method: str = "GET") -> Answer:
    """One plain request, redirects not followed (a 302 is an answer of its own here)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        names = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, names, body)
    finally:
        connection.close()


def fetch_etags(
    base_url: str, keys: set[tuple[str, str]], user_agent: str = USER_AGENT
) -> dict[tuple[str, str], str]:
    """The current ETag of each (URL path, Accept), by HEAD requests on a few connections."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    local = threading.local()

    def one(key: tuple[str, str]) -> tuple[tuple[str, str], str]:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        path, accept = key
        connection.request("HEAD", path, headers={"Accept": accept, "User-Agent": user_agent})
        response = connection.getresponse()
        response.read()
        etag = response.getheader("ETag")
        if response.status != 200 or not etag:
            raise RuntimeError(f"{base_url}{path}: HTTP {response.status}, ETag {etag!r}")
        return key, etag

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(one, sorted(keys)))
