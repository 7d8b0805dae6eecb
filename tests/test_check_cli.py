"""`pypi-mirror check` (its lines and exit codes) and the `--listen` / `--repo-path`
overrides of serve, sync and check, all through the real CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.fakepypi import FakePyPI
from tests.mirror import deep_merge, free_port


def write_config(tmp: Path, fake: FakePyPI | None, **extra: Any) -> Path:
    upstream = (
        {"pypi_url": fake.url, "packages_url": fake.files_url}
        if fake is not None
        else {"pypi_url": f"http://127.0.0.1:{free_port()}"}  # nobody listens there
    )
    config = deep_merge(
        {
            "repo_path": str(tmp / "repo"),
            "listen": f"127.0.0.1:{free_port()}",
            "workers": 1,
            "upstream": upstream,
            "log": {"path": str(tmp / "access.log")},
            "timeouts": {"upstream": "5s"},
        },
        extra,
    )
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYPI_MIRROR_HOME": str(tmp / "default-home")},
    )


def lines(done: subprocess.CompletedProcess[str], prefix: str) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith(prefix)]


# -- check ---------------------------------------------------------------------------------


def test_check_passes_on_a_good_setup(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    tier = tmp_path / "tier"
    tier.mkdir()
    config = write_config(
        tmp_path, fake_pypi, cache={"tiers": [{"path": str(tier), "size_limit": "1g"}]}
    )
    done = cli(tmp_path, "check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    keys = [line.split()[1].rstrip(":") for line in lines(done, "ok ")]
    assert keys == [
        "repo_path",
        "cache.tiers[0].path",
        "log.path",
        "tls",
        "listen",
        "database.url",
        "upstream.pypi_url",
        "upstream.packages_url",
        "upstream.serials_source",
    ]
    assert "pypi-mirror.db answers (empty: the first command creates the schema)" in done.stdout
    assert lines(done, "FAIL") == []
    assert "xmlrpc" in lines(done, "ok   upstream.serials_source")[0]
    assert done.stdout.rstrip().endswith("ok: configuration and environment are ready")
    # It changes nothing.
    assert not (tmp_path / "repo").exists() and not (tmp_path / "access.log").exists()
    # One short request each (the root index is not read), and one XML-RPC call.
    assert len(fake_pypi.requests_matching("/simple/", "GET")) == 1
    assert len(fake_pypi.requests_matching("/pypi", "POST")) == 1


def test_check_simple_json_source(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    config = write_config(tmp_path, fake_pypi, upstream={"serials_source": "simple-json"})
    done = cli(tmp_path, "check", "-c", str(config))
    assert done.returncode == 0, done.stdout
    (line,) = lines(done, "ok   upstream.serials_source")
    assert "PEP 691 JSON root index" in line
    assert fake_pypi.requests_matching("/pypi", "POST") == []


def test_check_names_every_problem(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    (tmp_path / "repo").write_text("")  # a file where the data folder should be
    (tmp_path / "logs").mkdir()
    fake_pypi.fail("/pypi", 405, times=None)  # XML-RPC refused
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(
            tmp_path, fake_pypi, listen=f"127.0.0.1:{port}", log={"path": str(tmp_path / "logs")}
        )
        done = cli(tmp_path, "check", "-c", str(config))
    assert done.returncode == 1, done.stdout
    failed = lines(done, "FAIL")
    assert [line.split()[1].rstrip(":") for line in failed] == [
        "repo_path",
        "log.path",
        "listen",
        "upstream.serials_source",
    ]
    assert f"'{tmp_path / 'repo'}' is a regular file" in failed[0]
    assert f"cannot bind 127.0.0.1:{port}" in failed[2]
    assert "HTTP 405" in failed[3] and "upstream.serials_source: simple-json" in failed[3]
    assert done.stdout.rstrip().endswith("4 problem(s) found")


def test_check_unreachable_upstream(tmp_path: Path) -> None:
    config = write_config(tmp_path, None)
    done = cli(tmp_path, "check", "-c", str(config))
    assert done.returncode == 1
    (line,) = lines(done, "FAIL upstream.pypi_url")
    assert "cannot reach http://127.0.0.1:" in line


def test_check_gives_up_on_a_silent_upstream_after_5_seconds(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    fake_pypi.delay("/simple/", 30)
    config = write_config(tmp_path, fake_pypi, upstream={"serials_source": "simple-json"})
    clock = time.monotonic()
    done = cli(tmp_path, "check", "-c", str(config))
    assert time.monotonic() - clock < 15
    assert done.returncode == 1
    (line,) = lines(done, "FAIL upstream.pypi_url")
    assert "no answer within 5s" in line


def test_check_offline_asks_nobody(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    done = cli(tmp_path, "check", "--offline", "-c", str(write_config(tmp_path, fake_pypi)))
    assert done.returncode == 0, done.stdout
    assert fake_pypi.requests == []
    assert not any("upstream" in line for line in done.stdout.splitlines())


def test_check_on_an_invalid_config_exits_2(tmp_path: Path) -> None:
    tier = tmp_path / "tier"
    tier.mkdir()
    tiers = [{"path": str(tier), "size_limit": "1g"}] * 2
    done = cli(tmp_path, "check", "-c", str(write_config(tmp_path, None, cache={"tiers": tiers})))
    assert done.returncode == 2
    assert "cache.tiers[1].path" in done.stderr


# -- --listen and --repo-path --------------------------------------------------------------


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answered at {url}")


def test_serve_listens_where_listen_says(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    config = write_config(tmp_path, fake_pypi)
    configured = yaml.safe_load(config.read_text())["listen"]
    port = free_port()
    repo = tmp_path / "other-repo"
    overrides = ["--listen", f"127.0.0.1:{port}", "--repo-path", str(repo)]
    process = subprocess.Popen(
        [sys.executable, "-m", "pypi_mirror", "serve", "-c", str(config), *overrides],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/pypi/simple/", process) == 200
        with socket.socket() as probe:  # the configured address is not used
            probe.bind(("127.0.0.1", int(configured.rsplit(":", 1)[1])))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(40)
    assert (repo / "pypi-mirror.db").exists()
    assert not (tmp_path / "repo").exists()


def test_sync_writes_where_repo_path_says(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    config = write_config(tmp_path, fake_pypi)
    repo = tmp_path / "elsewhere"
    done = cli(tmp_path, "sync", "-c", str(config), "--repo-path", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repo / "simple" / "six" / "index.html").exists()
    assert not (tmp_path / "repo").exists()


def test_overrides_apply_to_the_embedded_default(tmp_path: Path) -> None:
    repo = tmp_path / "mine"
    done = cli(tmp_path, "check", "--offline", "--repo-path", str(repo), "--listen", ":0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok   repo_path: '{repo}'" in done.stdout
    assert "ok   listen: *:0 is free" in done.stdout
    assert "embedded default" in done.stderr


def test_a_bad_override_is_refused_naming_it(tmp_path: Path) -> None:
    done = cli(tmp_path, "serve", "--listen", "nope")
    assert done.returncode == 2
    assert "--listen" in done.stderr and "invalid listen address" in done.stderr
    (tmp_path / "file").write_text("")
    done = cli(tmp_path, "sync", "--repo-path", str(tmp_path / "file"))
    assert done.returncode == 2
    assert f"repo_path: '{tmp_path / 'file'}' is a regular file" in done.stderr


def test_help_documents_the_overrides(tmp_path: Path) -> None:
    for command in ("serve", "sync", "check"):
        done = cli(tmp_path, command, "--help")
        assert "--listen HOST:PORT" in done.stdout and "--repo-path" in done.stdout
