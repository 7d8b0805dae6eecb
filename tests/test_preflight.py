"""Configuration mistakes found at start, through the real CLI: exit status 2, a message that
names the key and the value, nothing started and nothing written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pypi_mirror.config import config_from_dict
from pypi_mirror.preflight import preflight
from tests.tmpfs import remount_read_only, tmpfs


def run_cli(tmp: Path, command: str, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", command, "-c", str(path)],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def base(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "repo_path": str(tmp / "repo"),
        "listen": f"127.0.0.1:{free_port()}",
        "workers": 1,
        # Never reached: each of these runs stops before it talks to anyone.
        "upstream": {"pypi_url": "http://127.0.0.1:9", "packages_url": "http://127.0.0.1:9"},
        **extra,
    }


def assert_refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    for text in expected:
        assert text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "serving" not in done.stderr  # nothing started


# -- log.path (serve) ------------------------------------------------------------------------


def test_log_path_naming_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    done = run_cli(tmp_path, "serve", base(tmp_path, log={"path": str(folder)}))
    assert_refused(done, f"log.path: '{folder}' is a folder")
    assert not (tmp_path / "repo").exists()


def test_log_path_in_a_missing_folder(tmp_path: Path) -> None:
    log = tmp_path / "nowhere" / "access.log"
    done = run_cli(tmp_path, "serve", base(tmp_path, log={"path": str(log)}))
    assert_refused(done, f"log.path: cannot create '{log}'", "does not exist")
    assert not (tmp_path / "repo").exists()


def test_log_path_unwritable(tmp_path: Path) -> None:
    """A read-only filesystem: unwritable for root too (a chmod would not stop root)."""
    with tmpfs(tmp_path / "ro", "64k") as mount:
        existing = mount / "existing.log"
        existing.write_text("")
        remount_read_only(mount)
        new = mount / "access.log"
        done = run_cli(tmp_path, "serve", base(tmp_path, log={"path": str(new)}))
        assert_refused(done, f"log.path: cannot create '{new}': folder '{mount}' is not writable")
        done = run_cli(tmp_path, "serve", base(tmp_path, log={"path": str(existing)}))
        assert_refused(done, f"log.path: cannot write '{existing}': Read-only file system")
    assert not (tmp_path / "repo").exists()


def test_log_path_is_not_checked_by_sync(tmp_path: Path) -> None:
    """sync never writes the access log: a log path meant for serve does not stop it."""
    config = config_from_dict(base(tmp_path, log={"path": str(tmp_path / "no" / "x.log")}))
    assert preflight(config, "sync") == []
    assert [p.key for p in preflight(config, "serve")] == ["log.path"]


# -- repo_path (serve and sync) ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "sync"])
def test_repo_path_naming_a_regular_file(tmp_path: Path, command: str) -> None:
    file = tmp_path / "repo"
    file.write_text("not a folder")
    done = run_cli(tmp_path, command, base(tmp_path))
    assert_refused(done, f"repo_path: '{file}' is a regular file; it must be a folder")
    assert "Errno" not in done.stderr
    assert file.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["serve", "sync"])
def test_repo_path_below_a_regular_file(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("")
    repo = tmp_path / "file" / "repo"
    done = run_cli(tmp_path, command, {**base(tmp_path), "repo_path": str(repo)})
    assert_refused(done, f"repo_path: cannot create '{repo}'", "is not a folder")


def test_repo_path_on_a_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as mount:
        repo = mount / "repo"
        config = {**base(tmp_path), "repo_path": str(repo)}
        done = run_cli(tmp_path, "sync", config)
        assert_refused(done, f"repo_path: cannot create '{repo}'", "is not writable")
        # A dry run writes nothing: reading is all it needs.
        assert preflight(config_from_dict(config), "dry-run") == []
        assert preflight(config_from_dict({**config, "repo_path": str(mount)}), "dry-run") == []
        assert [p.key for p in preflight(config_from_dict(config), "sync")] == ["repo_path"]


# -- cache tiers (serve and sync) ----------------------------------------------------------------


def tiers_config(tmp: Path, *paths: Path) -> dict[str, Any]:
    tiers = [{"path": str(path), "size_limit": "1g"} for path in paths]
    return base(tmp, cache={"tiers": tiers})


@pytest.mark.parametrize("command", ["serve", "sync"])
def test_two_tiers_on_one_folder(tmp_path: Path, command: str) -> None:
    tier = tmp_path / "tier"
    tier.mkdir()
    done = run_cli(tmp_path, command, tiers_config(tmp_path, tier, tier))
    assert_refused(done, f"cache.tiers[1].path: '{tier}' is the same folder as cache.tiers[0]")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("command", ["serve", "sync"])
def test_nested_tiers(tmp_path: Path, command: str) -> None:
    outer = tmp_path / "hdd"
    inner = outer / "ssd"
    inner.mkdir(parents=True)
    done = run_cli(tmp_path, command, tiers_config(tmp_path, inner, outer))
    assert_refused(done, f"cache.tiers[1].path: '{outer}' contains cache.tiers[0] ({inner})")
    done = run_cli(tmp_path, command, tiers_config(tmp_path, outer, inner))
    assert_refused(done, f"cache.tiers[1].path: '{inner}' is inside cache.tiers[0] ({outer})")


@pytest.mark.parametrize("folder", ["simple", "json"])
def test_tier_inside_the_index(tmp_path: Path, folder: str) -> None:
    tier = tmp_path / "repo" / folder / "packages"
    tier.mkdir(parents=True)
    done = run_cli(tmp_path, "sync", tiers_config(tmp_path, tier))
    assert_refused(
        done, f"cache.tiers[0].path: '{tier}' is in {tmp_path / 'repo' / folder}, where sync"
    )


def test_tier_containing_the_index(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    done = run_cli(tmp_path, "serve", tiers_config(tmp_path, repo))
    assert_refused(done, f"cache.tiers[0].path: '{repo}' contains {repo / 'simple'}")


def test_tier_aliased_by_a_symlink(tmp_path: Path) -> None:
    tier = tmp_path / "tier"
    tier.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(tier)
    done = run_cli(tmp_path, "sync", tiers_config(tmp_path, tier, alias))
    assert_refused(
        done, "cache.tiers[1].path:", "same folder as cache.tiers[0]", "after resolving symlinks"
    )
    assert not (tmp_path / "repo").exists()


def test_tiers_apart_from_each_other_and_the_index_are_fine(tmp_path: Path) -> None:
    hot, cold = tmp_path / "repo" / "hot", tmp_path / "cold"
    hot.mkdir(parents=True)
    cold.mkdir()
    config = config_from_dict(tiers_config(tmp_path, hot, cold))
    assert preflight(config, "sync") == []
    assert preflight(config, "serve") == []


def test_tier_on_a_read_only_filesystem_stops_sync_only(tmp_path: Path) -> None:
    """serve only reads the tiers; sync writes them."""
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as tier:
        config = config_from_dict(tiers_config(tmp_path, tier))
        assert preflight(config, "serve") == []
        (problem,) = preflight(config, "sync")
        assert (
            str(problem)
            == f"cache.tiers[0].path: folder '{tier}' is not writable by uid {os.geteuid()}"
        )


# -- listen and tls (serve) -----------------------------------------------------------------


def test_listen_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(tmp_path, "serve", {**base(tmp_path), "listen": f"127.0.0.1:{port}"})
    assert_refused(done, f"listen: cannot bind 127.0.0.1:{port}")
    assert not (tmp_path / "repo").exists()


def test_tls_files_missing(tmp_path: Path) -> None:
    tls = {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}
    done = run_cli(tmp_path, "serve", base(tmp_path, tls=tls))
    assert_refused(done, f"tls.cert: '{tmp_path / 'cert.pem'}' does not exist")
    assert f"tls.key: '{tmp_path / 'key.pem'}'" in done.stderr


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    (tmp_path / "repo").write_text("")
    (tmp_path / "logs").mkdir()
    done = run_cli(tmp_path, "serve", base(tmp_path, log={"path": str(tmp_path / "logs")}))
    assert_refused(done, "repo_path:", "log.path:")
