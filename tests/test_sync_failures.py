"""`sync` failures are counted and named, and only transient ones are retried.

- deterministic upstream answers (a 403, a 405, the wrong content type) are asked once;
  transient ones (5xx, 429, timeouts) are retried — counted at the fake upstream;
- an upstream refusing XML-RPC gets the fix named: `upstream.serials_source: simple-json`;
- a full disk: every project or file that could not be stored is counted as failed, the exit
  status is non-zero, and no temporary file is left (real `pypi-mirror sync`, small tmpfs);
- a voted file whose size check failed fails the run.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pypi_mirror.config import config_from_dict
from pypi_mirror.db import Database, Vote
from pypi_mirror.index.sync import SyncTuning
from pypi_mirror.repo import TEMP_PREFIX
from pypi_mirror.sync_job import run_sync
from tests.fakepypi import FakeFile, FakePyPI
from tests.mirror import deep_merge
from tests.tmpfs import tmpfs

FAST = SyncTuning(backoff=0.01, max_backoff=0.05, stale_delay=0.01, stop_poll=0.01)


def config_dict(repo: Path, fake: FakePyPI, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "repo_path": str(repo),
        "upstream": {"pypi_url": fake.url, "packages_url": fake.files_url},
        "sync": {"retry": 2},
        "timeouts": {"upstream": "5s"},
    }
    return deep_merge(base, overrides)


def sync_cli(
    tmp: Path, repo: Path, fake: FakePyPI, **overrides: Any
) -> subprocess.CompletedProcess[str]:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(repo, fake, **overrides)))
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def temp_files(*roots: Path) -> list[Path]:
    """Temporary files anywhere under ``roots`` (the staging folders themselves may stay)."""
    return [p for root in roots for p in root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


def index_counts(stdout: str) -> dict[str, int]:
    match = re.search(r"index sync: (\d+) new, (\d+) updated, (\d+) removed, (\d+) failed", stdout)
    assert match, stdout
    return dict(zip(("new", "updated", "removed", "failed"), map(int, match.groups()), strict=True))


def vote(repo: Path, path: str, prefixes: int) -> None:
    db = Database.in_repo(repo)
    try:
        now = time.time() - 60  # sync runs on the real clock
        votes = [Vote(path, f"10.9.{i}.0/24", now) for i in range(prefixes)]
        assert db.add_votes(votes, dedup_window=300) == prefixes
    finally:
        db.close()


# -- the listing ---------------------------------------------------------------------------


def test_xmlrpc_refused_is_asked_once_and_names_simple_json(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    fake_pypi.fail("/pypi", 405, times=None)  # what PyPI answers here, and many mirrors
    clock = time.monotonic()
    done = sync_cli(tmp_path, tmp_path / "repo", fake_pypi, sync={"retry": 3})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "HTTP 405" in done.stdout
    assert "upstream.serials_source: simple-json" in done.stdout
    # One POST, no backoff (three retries would have waited 1 + 2 + 4 s).
    assert len(fake_pypi.requests_matching("/pypi", "POST")) == 1
    assert time.monotonic() - clock < 6


def test_transient_listing_error_is_retried(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    fake_pypi.fail("/pypi", 503, times=1)
    done = sync_cli(tmp_path, tmp_path / "repo", fake_pypi)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 new, 0 updated, 0 removed, 0 failed" in done.stdout
    # changelog_last_serial (503), then changelog_last_serial and list_packages_with_serial.
    assert len(fake_pypi.requests_matching("/pypi", "POST")) == 3


def test_wrong_content_type_of_the_json_root_is_not_retried(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    fake_pypi.fail("/simple/", 200, times=None)  # a 200 in text/plain: not PEP 691 JSON
    done = sync_cli(
        tmp_path, tmp_path / "repo", fake_pypi, upstream={"serials_source": "simple-json"}
    )
    assert done.returncode == 1
    assert "expected application/vnd.pypi.simple.v1+json" in done.stdout
    assert len(fake_pypi.requests_matching("/simple/", "GET")) == 1


# -- project documents and files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "requests"),
    [(403, 1), (401, 1), (410, 1), (503, 3), (429, 3), (500, 3)],
)
def test_project_json_retried_only_when_transient(
    tmp_path: Path,
    fake_pypi: FakePyPI,
    capsys: pytest.CaptureFixture[str],
    status: int,
    requests: int,
) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    fake_pypi.add_wheel("ok-project", "1.0")
    fake_pypi.fail("/pypi/six/json", status, times=None)
    config = config_from_dict(config_dict(tmp_path / "repo", fake_pypi))  # retry: 2
    assert run_sync(config, tuning=FAST, progress_bar=False) == 1
    out = capsys.readouterr().out
    assert "1 new, 0 updated, 0 removed, 1 failed" in out
    assert f"six (HTTP {status})" in out
    assert len(fake_pypi.requests_matching("/pypi/six/json", "GET")) == requests


def test_project_json_that_is_not_json_is_not_retried(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_pypi.add_wheel("six", "1.16.0")
    fake_pypi.fail("/pypi/six/json", 200, times=None)  # a 200 in text/plain (a login portal)
    config = config_from_dict(config_dict(tmp_path / "repo", fake_pypi))
    assert run_sync(config, tuning=FAST, progress_bar=False) == 1
    assert "six (not JSON: 'text/plain" in capsys.readouterr().out
    assert len(fake_pypi.requests_matching("/pypi/six/json", "GET")) == 1


@pytest.mark.parametrize(("status", "requests"), [(403, 1), (503, 3)])
def test_file_download_retried_only_when_transient(
    tmp_path: Path,
    fake_pypi: FakePyPI,
    capsys: pytest.CaptureFixture[str],
    status: int,
    requests: int,
) -> None:
    wheel = fake_pypi.add_wheel("six", "1.16.0")
    repo = tmp_path / "repo"
    vote(repo, wheel.path, 3)
    fake_pypi.fail(f"/files/packages/{wheel.path}", status, times=None)
    config = config_from_dict(config_dict(repo, fake_pypi))  # retry: 2
    assert run_sync(config, tuning=FAST, progress_bar=False) == 1
    out = capsys.readouterr().out
    assert "1 download errors" in out
    assert "cache: 1 files failed: 1 downloads" in out
    assert f"download {wheel.path}: HTTP {status}" in out
    assert len(fake_pypi.requests_matching(wheel.path, "GET")) == requests


def test_a_voted_file_whose_size_check_failed_fails_the_run(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    wheel = fake_pypi.add_wheel("six", "1.16.0")
    metadata = f"{wheel.path}.metadata"  # the index cannot tell its size: HEAD
    repo = tmp_path / "repo"
    vote(repo, metadata, 3)
    fake_pypi.fail(metadata, 500, times=None)
    done = sync_cli(tmp_path, repo, fake_pypi, sync={"retry": 1})
    assert done.returncode == 1, done.stdout
    assert "cache: 1 files failed: 0 downloads, 1 size checks" in done.stdout
    assert f"size of {fake_pypi.files_url}/packages/{metadata}: HTTP 500" in done.stdout
    assert len(fake_pypi.requests_matching(metadata, "HEAD")) == 2  # one retry: 5xx is transient


# -- a full disk (real `pypi-mirror sync`, small tmpfs) -------------------------------------


def test_full_disk_during_the_index_sync_counts_every_project(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    projects = 200
    for number in range(projects):
        fake_pypi.add_wheel(f"proj{number}", "1.0", extra_bytes=2000)
    with tmpfs(tmp_path / "disk", "600k") as disk:
        repo = disk / "repo"
        done = sync_cli(tmp_path, repo, fake_pypi)
        assert done.returncode == 1, done.stdout + done.stderr
        counts = index_counts(done.stdout)
        with sqlite3.connect(repo / "pypi-mirror.db") as conn:
            (stored,) = conn.execute("SELECT count(*) FROM serials").fetchone()
        # Every project is new, or counted as failed; none is lost from the summary.
        assert counts["new"] == stored
        assert counts["failed"] == projects - stored > 0
        assert "the disk is full" in done.stdout
        assert f"sync failed: {projects - stored} project(s) could not be synced" in done.stdout
        assert temp_files(repo) == []
        assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_full_disk_during_downloads_counts_every_file(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    wheels: list[FakeFile] = [
        fake_pypi.add_wheel(f"big{number}", "1.0", extra_bytes=90_000) for number in range(4)
    ]
    repo = tmp_path / "repo"
    for rank, wheel in enumerate(wheels):
        vote(repo, wheel.path, 6 - rank)  # a fixed order: big0 first
    with tmpfs(tmp_path / "disk", "200k") as disk:
        tier = disk / "tier"
        tier.mkdir()
        done = sync_cli(
            tmp_path,
            repo,
            fake_pypi,
            cache={"tiers": [{"path": str(tier), "size_limit": "1g"}]},  # more than the disk
            sync={"retry": 3, "concurrent_downloads": 1},
        )
        assert done.returncode == 1, done.stdout + done.stderr
        placed = [w for w in wheels if (tier / w.path).is_file()]
        assert 0 < len(placed) < len(wheels)
        failed = len(wheels) - len(placed)
        assert f"downloaded {len(placed)} files" in done.stdout
        assert f"{failed} download errors" in done.stdout
        assert f"cache management: {failed} file(s) failed" in done.stdout
        assert "No space left on device" in done.stdout
        # A full disk is not asked again: one GET per file.
        for wheel in wheels:
            assert len(fake_pypi.requests_matching(wheel.path, "GET")) == 1
        assert temp_files(tier, repo) == []
