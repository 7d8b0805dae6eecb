"""Run the real `pypi-mirror serve` as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def client_env() -> dict[str, str]:
    """pip/uv isolated from this machine's own configuration: the mirror is the only source."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "UV_")) or k in ("PIP_CERT",)
    }
    env.update(
        PIP_CONFIG_FILE="/dev/null",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        UV_NO_CACHE="1",
        UV_NO_CONFIG="1",
    )
    return env


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Mirror:
    """A `pypi-mirror serve` process on 127.0.0.1 with its own repo and config file."""

    def __init__(self, tmp: Path, upstream_url: str, files_url: str, **overrides: Any) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.repo = tmp / "repo"
        self.access_log = tmp / "access.log"
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "repo_path": str(self.repo),
            "workers": 1,
            "upstream": {"pypi_url": upstream_url, "packages_url": files_url},
            "log": {"path": str(self.access_log), "format": "mirror-json"},
            "timeouts": {"upstream": "5s"},
        }
        self.config = deep_merge(config, overrides)
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = tmp / "serve.stderr"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.config.get('prefix', '/pypi')}"

    @property
    def simple(self) -> str:
        return f"{self.base}/simple/"

    def start(self, timeout: float = 20.0) -> Mirror:
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pypi_mirror", "serve", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=self.tmp,
            start_new_session=True,  # its own process group, as a service or a terminal gives
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited early: {self.stderr()}")
            try:
                if "tls" in self.config:  # any certificate will do to see that it is up
                    ready = self.base.replace("http://", "https://") + "/ready-check"
                    urllib.request.urlopen(
                        ready, timeout=1, context=ssl._create_unverified_context()
                    )
                else:
                    urllib.request.urlopen(f"{self.base}/ready-check", timeout=1)
            except urllib.error.HTTPError:
                return self  # any HTTP answer means the server is up
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"serve did not start: {self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """To the master and every worker at once, as Ctrl-C in a terminal does."""
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the mirror recorded ------------------------------------------------------------

    def votes(self) -> list[tuple[str, str]]:
        """(file path, prefix) of every stored vote."""
        with sqlite3.connect(self.repo / "pypi-mirror.db") as conn:
            return conn.execute(
                "SELECT f.path, v.prefix FROM votes v JOIN files f ON f.id = v.file_id"
            ).fetchall()

    def log_entries(self, wait: float = 3.0) -> list[dict[str, Any]]:
        """Access log entries (waits for the once-a-second flush)."""
        deadline = time.monotonic() + wait
        entries: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.access_log.exists():
                text = self.access_log.read_bytes()
                entries = [orjson.loads(line) for line in text.splitlines() if line]
            time.sleep(0.2)
        return entries

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.1)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


def http(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 15.0
) -> Reply:
    """One request, no redirects followed, no decompression: what the server really said."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()
