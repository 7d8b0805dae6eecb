"""Starting and stopping the two servers, each on its own loopback port, each with its own
folder under ``benchmarks/.work/``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

NGINX_CONF = """\
# Written by benchmarks/serve: nginx as a mirror site would run it, on the benchmark's tree.
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{
        text/html html;
        application/zip whl zip;
        application/x-gzip gz;
    }}
    default_type application/octet-stream;
    log_format combined_ua '$remote_addr - $remote_user [$time_local] "$request" '
                           '$status $body_bytes_sent "$http_referer" "$http_user_agent"';
    access_log {prefix}/access.log combined_ua buffer=64k flush=1s;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    keepalive_requests {keepalive_requests};
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location {url_prefix}/ {{
            alias {repo}/;
            index index.html;
        }}
    }}
}}
"""

MIRROR_CONF = """\
# Written by benchmarks/serve. Upstream URLs point at a closed loopback port: the benchmark
# serves local files only and must never reach out.
listen: "127.0.0.1:{port}"
repo_path: {repo}
prefix: {url_prefix}
workers: {workers}
upstream:
  pypi_url: http://127.0.0.1:9/pypi
  packages_url: http://127.0.0.1:9/packages
  page_ttl: 3650d
log:
  path: {prefix}/access.log
  format: mirror-json
"""


class Server:
    """One server process we started (and only that one is ever signalled)."""

    name = ""

    def __init__(self, prefix: Path, port: int) -> None:
        self.prefix = prefix
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.pid_file = prefix / "server.pid"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    def start(self, probe_path: str) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        stop_leftover(self.pid_file)
        self.prepare()
        log = open(self.prefix / "server.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.pid_file.write_text(f"{self.process.pid}\n{' '.join(self.command())}\n")
        self._wait_ready(probe_path)

    def _wait_ready(self, path: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; "
                    f"see {self.prefix / 'server.log'}"
                )
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 35.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.pid_file.unlink(missing_ok=True)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the master and its workers."""
        total = 0
        for pid in {*self.worker_pids(), *([self.process.pid] if self.process else [])}:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / os.sysconf("SC_CLK_TCK")

    def worker_pids(self) -> list[int]:
        """The processes that serve (children of the master)."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            return []
        return pids or [self.process.pid]


def stop_leftover(pid_file: Path) -> None:
    """A previous run killed before its clean-up: stop the process it recorded, if it is
    still that same command (never some other process that got the pid since)."""
    try:
        pid_text, command = pid_file.read_text().split("\n", 1)
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if cmdline.strip() == command.strip():
        print(f"stopping a leftover server of an earlier run (pid {pid})", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


class Nginx(Server):
    name = "nginx"

    def __init__(
        self,
        prefix: Path,
        port: int,
        *,
        binary: str,
        repo: Path,
        url_prefix: str,
        workers: int,
        keepalive_requests: int,
    ) -> None:
        super().__init__(prefix, port)
        self.binary = binary
        self.repo = repo
        self.url_prefix = url_prefix
        self.workers = workers
        self.keepalive_requests = keepalive_requests

    def command(self) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]

    def prepare(self) -> None:
        (self.prefix / "tmp").mkdir(exist_ok=True)
        (self.prefix / "access.log").unlink(missing_ok=True)
        conf = NGINX_CONF.format(
            # As root, nginx drops its workers to `nobody`; keep root so they can read the tree.
            user="user root;\n" if os.geteuid() == 0 else "",
            workers=self.workers,
            prefix=self.prefix,
            port=self.port,
            url_prefix=self.url_prefix,
            repo=self.repo,
            keepalive_requests=self.keepalive_requests,
        )
        (self.prefix / "nginx.conf").write_text(conf)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 35.0) -> None:
        super().stop(signal.SIGQUIT, timeout)  # SIGQUIT: nginx's graceful stop (flushes logs)


class Mirror(Server):
    name = "pypi-mirror"

    def __init__(
        self, prefix: Path, port: int, *, python: str, repo: Path, url_prefix: str, workers: int
    ) -> None:
        super().__init__(prefix, port)
        self.python = python
        self.repo = repo
        self.url_prefix = url_prefix
        self.workers = workers

    def command(self) -> list[str]:
        return [self.python, "-m", "pypi_mirror", "serve", "-c", str(self.prefix / "config.yaml")]

    def prepare(self) -> None:
        (self.prefix / "access.log").unlink(missing_ok=True)
        for suffix in ("", "-wal", "-shm"):
            (self.repo / f"pypi-mirror.db{suffix}").unlink(missing_ok=True)
        conf = MIRROR_CONF.format(
            port=self.port,
            repo=self.repo,
            url_prefix=self.url_prefix,
            workers=self.workers,
            prefix=self.prefix,
        )
        (self.prefix / "config.yaml").write_text(conf)
