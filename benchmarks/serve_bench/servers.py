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

NGINX_COMMON = """\
{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
"""

NGINX_TEMP = """\
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
"""

NGINX_CONF = """\
# Written by benchmarks/serve: nginx as a mirror site would run it, doing our server's job on
# the benchmark's tree. Port {port}: misses redirect to the upstream; port {proxy_port}: misses
# are proxied from it.
{common}http {{
    types {{
        text/html html;
        application/vnd.pypi.simple.v1+json json;
        application/zip whl zip egg;
        application/x-gzip gz;
        application/x-bzip2 bz2;
        text/plain metadata;
    }}
    default_type application/octet-stream;
    log_format combined_ua '$remote_addr - $remote_user [$time_local] "$request" '
                           '$status $body_bytes_sent "$http_referer" "$http_user_agent"';
    access_log {prefix}/access.log combined_ua buffer=64k flush=1s;
    sendfile on;
    tcp_nopush on;
    etag on;
    keepalive_timeout 60s;
    keepalive_requests {keepalive_requests};
{temp}
    # The client address of X-Forwarded-For from the local proxy (our trusted_proxies).
    set_real_ip_from 127.0.0.1/32;
    real_ip_header X-Forwarded-For;
    # PEP 691 negotiation, roughly: a client that names the JSON type gets the JSON page.
    map $http_accept $simple_index {{
        default index.html;
        "~application/vnd\\.pypi\\.simple\\.v1\\+json" index.v1.json;
    }}
    upstream files_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
{locations}
        location @upstream {{
            return 302 {upstream_url}/packages/$file;
        }}
    }}
    server {{
        listen 127.0.0.1:{proxy_port} reuseport;
{locations}
        location @upstream {{
            proxy_pass http://files_upstream/packages/$file;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_buffers 16 64k;
            proxy_buffer_size 64k;
            # Relayed through memory only, as ours does (by default nginx spills whatever does
            # not fit the buffers into temporary files).
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""

NGINX_LOCATIONS = """\
        # The root index: index.html.gz to clients that accept gzip.
        location = {url_prefix}/simple/index.html {{
            alias {repo}/simple/index.html;
            gzip_static on;
        }}
        location {url_prefix}/simple/ {{
            alias {repo}/simple/;
            index $simple_index;
        }}
        # Files: the hottest tier first, then the next, then the upstream.
        location ~ "^{url_prefix}/packages/(?<file>{file_path})$" {{
            root {repo};
            try_files /tier0/$file /tier1/$file @upstream;
        }}"""

# PyPI's file path shape (ab/cd/<60 hex>/<filename>), as our server checks it.
FILE_PATH = "[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}/[^/]+"

UPSTREAM_CONF = """\
# Written by benchmarks/serve: the local stand-in for PyPI's file host (not measured).
{common}http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    keepalive_requests 100000;
{temp}
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {root};
    }}
}}
"""

MIRROR_CONF = """\
# Written by benchmarks/serve. pypi_url points at a closed loopback port (every page is local
# and fresh or owned by sync: never fetched); files come from the local upstream.
listen: "127.0.0.1:{port}"
repo_path: {repo}
prefix: {url_prefix}
workers: {workers}
trusted_proxies:
  - 127.0.0.1/32
upstream:
  pypi_url: http://127.0.0.1:9/pypi
  packages_url: {upstream_url}
  redirect_url: {upstream_url}
  page_ttl: 1d
fallback:
  default: "{fallback}"
cache:
  tiers:
    - path: {repo}/tier0
      size_limit: 100g
    - path: {repo}/tier1
      size_limit: 1t
log:
{log}
"""

SEED_DATABASE = """\
import sys
from pathlib import Path

from pypi_mirror.db import Database

repo = Path(sys.argv[1])
db = Database.in_repo(repo)
db.set_serial(sys.argv[2], int(sys.argv[3]), on_demand=False)
# The tree's root index is PyPI's own (927,088 projects, not in this database): tell the
# server it is current, or it would rewrite it from the one serials row at start.
try:
    from pypi_mirror.index.root_fresh import ROOT_SIGNATURE_KEY
except ImportError:  # a server from before root refreshing
    pass
else:
    root_json = repo / "simple" / "index.v1.json"
    if not root_json.exists():
        root_json.write_bytes(b'{"meta":{"api-version":"1.1"},"projects":[]}')
    db.set_setting(ROOT_SIGNATURE_KEY, db.serials_signature())
db.close()
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
    """An nginx of its own (prefix, config, pid file), with the config it is given."""

    name = "nginx"

    def __init__(self, prefix: Path, port: int, *, binary: str, conf: str, name: str) -> None:
        super().__init__(prefix, port)
        self.binary = binary
        self.conf = conf
        self.name = name

    def command(self) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]

    def prepare(self) -> None:
        (self.prefix / "tmp").mkdir(exist_ok=True)
        for log in ("access.log", "error.log"):
            (self.prefix / log).unlink(missing_ok=True)
        (self.prefix / "nginx.conf").write_text(self.conf)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 35.0) -> None:
        super().stop(signal.SIGQUIT, timeout)  # SIGQUIT: nginx's graceful stop (flushes logs)


def _common(prefix: Path, workers: int) -> dict[str, str]:
    return {
        "common": NGINX_COMMON.format(
            # As root, nginx drops its workers to `nobody`; keep root so they can read the tree.
            user="user root;\n" if os.geteuid() == 0 else "",
            workers=workers,
            prefix=prefix,
        ),
        "temp": NGINX_TEMP.format(prefix=prefix),
        "prefix": str(prefix),
    }


def front_nginx(
    prefix: Path,
    *,
    binary: str,
    port: int,
    proxy_port: int,
    repo: Path,
    url_prefix: str,
    workers: int,
    keepalive_requests: int,
    upstream_port: int,
) -> Nginx:
    locations = NGINX_LOCATIONS.format(url_prefix=url_prefix, repo=repo, file_path=FILE_PATH)
    conf = NGINX_CONF.format(
        **_common(prefix, workers),
        port=port,
        proxy_port=proxy_port,
        keepalive_requests=keepalive_requests,
        upstream_port=upstream_port,
        upstream_url=f"http://127.0.0.1:{upstream_port}",
        locations=locations,
    )
    return Nginx(prefix, port, binary=binary, conf=conf, name="nginx")


def upstream_nginx(prefix: Path, *, binary: str, port: int, root: Path, workers: int) -> Nginx:
    conf = UPSTREAM_CONF.format(**_common(prefix, workers), port=port, root=root)
    return Nginx(prefix, port, binary=binary, conf=conf, name="upstream")


class Mirror(Server):
    name = "pypi-mirror"

    def __init__(
        self,
        prefix: Path,
        port: int,
        *,
        python: str,
        repo: Path,
        url_prefix: str,
        workers: int,
        upstream_port: int,
        fallback: str = "302",
        access_log: bool = True,
        name: str = "pypi-mirror",
    ) -> None:
        super().__init__(prefix, port)
        self.python = python
        self.repo = repo
        self.url_prefix = url_prefix
        self.workers = workers
        self.upstream_port = upstream_port
        self.fallback = fallback
        self.access_log = access_log
        self.name = name

    def command(self) -> list[str]:
        return [self.python, "-m", "pypi_mirror", "serve", "-c", str(self.prefix / "config.yaml")]

    def prepare(self) -> None:
        (self.prefix / "access.log").unlink(missing_ok=True)
        log = f"  path: {self.prefix}/access.log\n  format: mirror-json"
        conf = MIRROR_CONF.format(
            port=self.port,
            repo=self.repo,
            url_prefix=self.url_prefix,
            workers=self.workers,
            upstream_url=f"http://127.0.0.1:{self.upstream_port}",
            fallback=self.fallback,
            log=log if self.access_log else '  path: ""',
        )
        (self.prefix / "config.yaml").write_text(conf)


def reset_database(python: str, repo: Path, synced_project: str, serial: int) -> None:
    """A new, empty database for our servers, with one project marked as maintained by
    ``sync`` (its page is served however old it is). Written through the project's own
    database code, so the schema is always the current one."""
    for suffix in ("", "-wal", "-shm"):
        (repo / f"pypi-mirror.db{suffix}").unlink(missing_ok=True)
    subprocess.run(
        [python, "-c", SEED_DATABASE, str(repo), synced_project, str(serial)],
        check=True,
        env=os.environ.copy(),
    )
