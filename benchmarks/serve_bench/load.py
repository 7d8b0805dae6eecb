"""Driving wrk and reading its numbers (through a Lua ``done`` hook that prints JSON, rather
than parsing wrk's human-readable units)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# A pip-like agent: not a bot, so every file request on our server queues a vote.
USER_AGENT = 'pip/24.2 {"installer":{"name":"pip","version":"24.2"}} benchmarks/serve'
ACCEPT_HTML = "text/html"

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
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6


def headers_for(key: str) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if key == "page":
        headers["Accept"] = ACCEPT_HTML
    return headers


def run_wrk(
    wrk: str,
    url: str,
    headers: dict[str, str],
    *,
    seconds: float,
    connections: int,
    threads: int,
    script_dir: Path,
) -> LoadResult:
    script = script_dir / "report.lua"
    if not script.exists() or script.read_text() != REPORT_LUA:
        script.write_text(REPORT_LUA)
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
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
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


def check_once(base_url: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
    """One plain request before the load: a problem, or None when the server sent 200 and
    exactly the file (a 302 to the upstream would otherwise look like a fast answer)."""
    request = urllib.request.Request(base_url + path, headers=headers)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            got = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        return f"{path}: HTTP {error.code}"
    except OSError as error:
        return f"{path}: {error}"
    if status != 200:
        return f"{path}: HTTP {status}"
    if got != body:
        return f"{path}: body differs from the file ({len(got)} bytes, expected {len(body)})"
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None
