"""End-to-end index sync against the fake upstream: real HTTP, real sqlite, real files.

The main path, the kill test and signals run the real CLI (`python -m pypi_mirror sync`) as a
subprocess; the rest call `run_sync` in-process with short retry delays.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pypi_mirror.config import Config, config_from_dict
from pypi_mirror.db import Database, LocalFile
from pypi_mirror.index import root as root_module
from pypi_mirror.index.render import render_root_html, render_root_json
from pypi_mirror.index.root import write_root_index
from pypi_mirror.index.sync import SyncTuning
from pypi_mirror.progress import Progress
from pypi_mirror.repo import TEMP_PREFIX, Repo
from pypi_mirror.sync_job import INDEX_LOCK, run_sync
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, client_env, deep_merge

FAST = SyncTuning(backoff=0.01, max_backoff=0.05, stale_delay=0.01, stop_poll=0.01)
# The same, applying projects in a pool of worker processes (as big runs do).
POOLED = replace(FAST, local_workers=2, pool_threshold=0)


# -- helpers -------------------------------------------------------------------------------


def config_dict(repo: Path, fake: FakePyPI, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "repo_path": str(repo),
        "upstream": {"pypi_url": fake.url, "packages_url": fake.files_url},
        "sync": {"retry": 2, "concurrent_downloads": 4},
        "timeouts": {"upstream": "5s"},
    }
    return deep_merge(base, overrides)


def make_config(repo: Path, fake: FakePyPI, **overrides: Any) -> Config:
    return config_from_dict(config_dict(repo, fake, **overrides))


def write_config(tmp: Path, repo: Path, fake: FakePyPI, **overrides: Any) -> Path:
    path = tmp / f"config-{repo.name}.yaml"
    path.write_text(yaml.safe_dump(config_dict(repo, fake, **overrides)))
    return path


def cli(config_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sync(
    config: Config,
    capsys: pytest.CaptureFixture[str] | None = None,
    tuning: SyncTuning = FAST,
) -> tuple[int, str]:
    code = run_sync(config, tuning=tuning, progress_bar=False)
    out = capsys.readouterr().out if capsys is not None else ""
    return code, out


def tree(repo: Path) -> dict[str, bytes]:
    """Every index document (simple/ and json/) by relative path."""
    found = {}
    for top in ("simple", "json"):
        for path in sorted((repo / top).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(repo))] = path.read_bytes()
    return found


def serials(repo: Path) -> dict[str, int]:
    with sqlite3.connect(repo / "pypi-mirror.db") as conn:
        return dict(conn.execute("SELECT name, serial FROM serials"))


def json_fetches(fake: FakePyPI) -> list[str]:
    """Names whose /pypi/{name}/json was requested, in order."""
    return [r.path.split("/")[2] for r in fake.requests_matching("/json", "GET")]


def temp_files(repo: Path) -> list[Path]:
    return [p for p in repo.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


def populate(fake: FakePyPI) -> None:
    fake.add_wheel("Foo_Bar", "1.0", requires_python=">=3.8")
    fake.add_sdist("Foo_Bar", "1.0")
    fake.add_wheel("six", "1.16.0")
    fake.add_wheel("zope.interface", "6.0")
    fake.set_relative_urls("zope.interface")


def fresh_copy(tmp: Path, fake: FakePyPI) -> dict[str, bytes]:
    """What a first sync into an empty repository writes for the upstream as it is now."""
    repo = tmp / f"fresh-{time.monotonic_ns()}"
    assert run_sync(make_config(repo, fake), tuning=FAST, progress_bar=False) == 0
    return tree(repo)


def assert_complete(repo: Path) -> None:
    """Every visible document is whole: pages parse, HTML ends with its serial."""
    for relative, data in tree(repo).items():
        name = Path(relative).name
        if name.startswith(TEMP_PREFIX):
            continue
        if name.endswith(".gz"):
            gzip.decompress(data)
        elif name.endswith(".html"):
            assert data.rstrip().endswith((b"-->", b"</html>")), relative
        else:
            orjson.loads(data)


# -- main path (the real CLI) --------------------------------------------------------------


def test_first_sync_with_the_cli(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    populate(fake_pypi)
    repo = tmp_path / "repo"
    done = cli(write_config(tmp_path, repo, fake_pypi))
    assert done.returncode == 0, done.stderr
    assert "3 new, 0 updated, 0 removed, 0 failed" in done.stdout

    assert serials(repo) == {
        "foo-bar": fake_pypi.project_serial("foo-bar"),
        "six": fake_pypi.project_serial("six"),
        "zope-interface": fake_pypi.project_serial("zope-interface"),
    }
    # The JSON API copy is stored as fetched; both pages are there.
    for name in ("foo-bar", "six", "zope-interface"):
        stored = orjson.loads((repo / "json" / name).read_bytes())
        assert stored["last_serial"] == fake_pypi.project_serial(name)
        page = orjson.loads((repo / "simple" / name / "index.v1.json").read_bytes())
        assert page["meta"]["_last-serial"] == fake_pypi.project_serial(name)
        assert {f["filename"] for f in page["files"]} == {f.filename for f in fake_pypi.files(name)}
        html = (repo / "simple" / name / "index.html").read_text()
        assert f"<!--SERIAL {fake_pypi.project_serial(name)}-->" in html
    # Relative upstream URLs land on the same local links as absolute ones.
    zope = (repo / "simple" / "zope-interface" / "index.html").read_text()
    assert f"../../packages/{fake_pypi.files('zope.interface')[0].path}#sha256=" in zope

    root = orjson.loads((repo / "simple" / "index.v1.json").read_bytes())
    assert root["meta"]["_last-serial"] == fake_pypi.serial
    assert root["projects"] == [
        {"name": "foo-bar", "_last-serial": fake_pypi.project_serial("foo-bar")},
        {"name": "six", "_last-serial": fake_pypi.project_serial("six")},
        {"name": "zope-interface", "_last-serial": fake_pypi.project_serial("zope-interface")},
    ]
    root_html = (repo / "simple" / "index.html").read_bytes()
    assert b'<a href="six/">six</a>' in root_html
    for page in ("index.html", "index.v1.json"):
        plain = (repo / "simple" / page).read_bytes()
        assert gzip.decompress((repo / "simple" / f"{page}.gz").read_bytes()) == plain
    assert Database.in_repo(repo).get_setting("global_serial") == str(fake_pypi.serial)
    assert temp_files(repo) == []


def test_second_sync_fetches_only_changed_projects(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    populate(fake_pypi)
    config_path = write_config(tmp_path, tmp_path / "repo", fake_pypi)
    assert cli(config_path).returncode == 0
    fake_pypi.clear_requests()
    fake_pypi.add_wheel("six", "1.17.0")
    fake_pypi.add_wheel("brand-new", "0.1")

    done = cli(config_path)
    assert done.returncode == 0, done.stderr
    assert "1 new, 1 updated, 0 removed, 0 failed" in done.stdout
    assert sorted(json_fetches(fake_pypi)) == ["brand-new", "six"]
    six = orjson.loads((tmp_path / "repo" / "simple" / "six" / "index.v1.json").read_bytes())
    assert "1.17.0" in six["versions"]

    fake_pypi.clear_requests()
    assert cli(config_path).returncode == 0
    assert json_fetches(fake_pypi) == []


# -- hygiene -------------------------------------------------------------------------------


def place_cached(config: Config, path: str, tier: int = 0) -> Path:
    repo = Repo(config)
    target = repo.tier_file(tier, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"cached bytes")
    db = Database.in_repo(config.repo_path)
    db.set_local_files([LocalFile(path, 12, tier)])
    db.close()
    return target


def local_rows(config: Config) -> set[str]:
    db = Database.in_repo(config.repo_path)
    try:
        return {f.path for f in db.all_local_files()}
    finally:
        db.close()


def two_tier_config(tmp_path: Path, fake: FakePyPI, **overrides: Any) -> Config:
    hot, cold = tmp_path / "ssd", tmp_path / "hdd"
    hot.mkdir()
    cold.mkdir()
    tiers = [{"path": str(hot), "size_limit": "1g"}, {"path": str(cold), "size_limit": "1g"}]
    return make_config(tmp_path / "repo", fake, cache={"tiers": tiers}, **overrides)


def test_removed_project_loses_pages_json_serial_and_cached_files(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(fake_pypi)
    config = two_tier_config(tmp_path, fake_pypi)
    assert sync(config)[0] == 0
    wheel, sdist = fake_pypi.files("foo-bar")
    in_hot = place_cached(config, wheel.path, tier=0)
    in_cold = place_cached(config, sdist.path, tier=1)
    metadata = place_cached(config, wheel.path + ".metadata", tier=1)
    keep = place_cached(config, fake_pypi.files("six")[0].path, tier=0)

    fake_pypi.remove_project("foo-bar")
    code, out = sync(config, capsys)
    assert code == 0
    assert "0 new, 0 updated, 1 removed, 0 failed" in out
    assert "3 cached files deleted" in out
    repo = tmp_path / "repo"
    assert not (repo / "simple" / "foo-bar").exists()
    assert not (repo / "json" / "foo-bar").exists()
    assert "foo-bar" not in serials(repo)
    assert not in_hot.exists() and not in_cold.exists() and not metadata.exists()
    assert keep.exists()
    assert local_rows(config) == {fake_pypi.files("six")[0].path}
    root = orjson.loads((repo / "simple" / "index.v1.json").read_bytes())
    assert [p["name"] for p in root["projects"]] == ["six", "zope-interface"]
    assert b"foo-bar" not in (repo / "simple" / "index.html").read_bytes()


@pytest.mark.parametrize(
    ("source", "fetched_ago", "kept"),
    [
        ("xmlrpc", -60.0, True),  # fetched on demand after the listing was taken
        ("xmlrpc", 60.0, False),
        ("simple-json", 600.0, True),  # that listing may lag: recent projects are kept
        ("simple-json", 7200.0, False),
    ],
)
def test_unlisted_project_fetched_since_the_listing_is_kept(
    tmp_path: Path, fake_pypi: FakePyPI, source: str, fetched_ago: float, kept: bool
) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi, upstream={"serials_source": source})
    assert sync(config)[0] == 0
    db = Database.in_repo(tmp_path / "repo")
    db.set_serial(
        "six", fake_pypi.project_serial("six"), on_demand=True, now=time.time() - fetched_ago
    )
    db.close()
    fake_pypi.remove_project("six")
    assert sync(config)[0] == 0
    assert ("six" in serials(tmp_path / "repo")) is kept
    assert (tmp_path / "repo" / "simple" / "six" / "index.html").exists() is kept


@pytest.mark.parametrize("tuning", [FAST, POOLED], ids=["in-process", "pooled"])
def test_file_deleted_upstream_loses_its_cached_copy(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str], tuning: SyncTuning
) -> None:
    populate(fake_pypi)
    config = two_tier_config(tmp_path, fake_pypi)
    assert sync(config, tuning=tuning)[0] == 0
    wheel, sdist = fake_pypi.files("foo-bar")
    gone = place_cached(config, wheel.path, tier=1)
    kept = place_cached(config, sdist.path, tier=0)

    fake_pypi.remove_file("foo-bar", wheel.filename)
    code, out = sync(config, capsys, tuning)
    assert code == 0
    assert "0 new, 1 updated, 0 removed" in out
    assert not gone.exists()
    assert kept.exists()
    assert local_rows(config) == {sdist.path}
    page = (tmp_path / "repo" / "simple" / "foo-bar" / "index.html").read_text()
    assert wheel.filename not in page and sdist.filename in page


def test_yank_and_unyank_show_in_pages(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi)
    assert sync(config)[0] == 0
    wheel = fake_pypi.files("six")[0]
    page_json = tmp_path / "repo" / "simple" / "six" / "index.v1.json"
    page_html = tmp_path / "repo" / "simple" / "six" / "index.html"

    fake_pypi.yank("six", wheel.filename, "broken build")
    assert sync(config)[0] == 0
    assert orjson.loads(page_json.read_bytes())["files"][0]["yanked"] == "broken build"
    assert 'data-yanked="broken build"' in page_html.read_text()

    fake_pypi.unyank("six", wheel.filename)
    assert sync(config)[0] == 0
    assert orjson.loads(page_json.read_bytes())["files"][0]["yanked"] is False
    assert "data-yanked" not in page_html.read_text()


def test_quarantined_projects(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi)
    assert sync(config)[0] == 0
    fake_pypi.add_wheel("fresh", "1.0")
    fake_pypi.quarantine("fresh")  # listed, never seen by us, JSON 404
    fake_pypi.quarantine("six")  # listed, held by us, JSON 404
    fake_pypi.clear_requests()

    code, out = sync(config, capsys)
    assert code == 0, out
    assert "0 new, 0 updated, 1 removed, 0 failed, 1 skipped" in out
    repo = tmp_path / "repo"
    assert not (repo / "simple" / "six").exists() and "six" not in serials(repo)
    assert "fresh" not in serials(repo)
    # A 404 that would delete a project we hold is asked again briefly (a CDN may lag); a
    # new project's is not (it is tried next run anyway).
    assert json_fetches(fake_pypi).count("six") == FAST.stale_retries + 1
    assert json_fetches(fake_pypi).count("fresh") == 1

    fake_pypi.quarantine("fresh", False)
    fake_pypi.quarantine("six", False)
    code, out = sync(config, capsys)
    assert code == 0
    assert "2 new" in out
    assert {"fresh", "six"} <= set(serials(repo))


def test_stale_answer_is_retried_then_the_body_serial_is_stored(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi)
    assert sync(config)[0] == 0
    old_serial = fake_pypi.project_serial("six")
    fake_pypi.add_wheel("six", "1.17.0")
    new_serial = fake_pypi.project_serial("six")

    # One stale answer: asked again, the fresh one is stored.
    fake_pypi.stale("six", times=1)
    fake_pypi.clear_requests()
    assert sync(config)[0] == 0
    assert json_fetches(fake_pypi) == ["six", "six"]
    assert serials(tmp_path / "repo")["six"] == new_serial

    # Always stale: accepted after the re-asks, with the serial the body carries, so the
    # next run asks again.
    fake_pypi.add_wheel("six", "1.18.0")
    fake_pypi.stale("six", times=100)
    fake_pypi.clear_requests()
    assert sync(config)[0] == 0
    assert json_fetches(fake_pypi) == ["six"] * (FAST.stale_retries + 1)
    assert serials(tmp_path / "repo")["six"] == new_serial
    assert new_serial > old_serial

    fake_pypi.clear_faults()
    fake_pypi.clear_requests()
    assert sync(config)[0] == 0
    assert json_fetches(fake_pypi) == ["six"]
    assert serials(tmp_path / "repo")["six"] == fake_pypi.project_serial("six")


def test_upstream_errors_are_retried(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi, sync={"retry": 3})
    fake_pypi.fail("/pypi/six/json", 503, times=2)
    fake_pypi.fail("/pypi", 502, times=1)  # the XML-RPC listing too
    assert sync(config)[0] == 0
    assert "six" in serials(tmp_path / "repo")
    assert json_fetches(fake_pypi).count("six") == 3


def test_persistent_failure_is_a_nonzero_exit_naming_the_project(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi, sync={"retry": 2})
    fake_pypi.fail("/pypi/six/json", 500, times=None)
    code, out = sync(config, capsys)
    assert code == 1
    assert "six (HTTP 500)" in out
    assert "1 project(s) could not be synced: six" in out
    assert json_fetches(fake_pypi).count("six") == 3
    # Everything else was synced, and the root index still lists what we hold.
    repo = tmp_path / "repo"
    assert set(serials(repo)) == {"foo-bar", "zope-interface"}
    assert "global_serial" not in {
        k for (k,) in sqlite3.connect(repo / "pypi-mirror.db").execute("SELECT key FROM settings")
    }
    root = orjson.loads((repo / "simple" / "index.v1.json").read_bytes())
    assert [p["name"] for p in root["projects"]] == ["foo-bar", "zope-interface"]

    fake_pypi.clear_faults()
    assert sync(config)[0] == 0
    assert "six" in serials(repo)


def test_timeouts_are_retried_then_fail(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(fake_pypi)
    config = make_config(
        tmp_path / "repo", fake_pypi, sync={"retry": 1}, timeouts={"upstream": "0.2s"}
    )
    fake_pypi.delay("/pypi/six/json", 1.0)
    code, out = sync(config, capsys)
    assert code == 1
    assert "six (timeout)" in out
    assert json_fetches(fake_pypi).count("six") == 2
    assert set(serials(tmp_path / "repo")) == {"foo-bar", "zope-interface"}


def test_unreachable_upstream_aborts_with_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_from_dict(
        {
            "repo_path": str(tmp_path / "repo"),
            "upstream": {"pypi_url": "http://127.0.0.1:9", "packages_url": "http://127.0.0.1:9"},
            "sync": {"retry": 0},
        }
    )
    code, out = sync(config, capsys)
    assert code == 1
    assert "cannot list the upstream's projects" in out


# -- runs that end badly -------------------------------------------------------------------


def wait_for_serials(repo: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "sync finished before it could be stopped"
        try:
            if len(serials(repo)) >= count:
                return
        except sqlite3.OperationalError:
            pass  # the schema is not there yet
        time.sleep(0.02)
    raise AssertionError("sync made no progress")


def many_projects(fake: FakePyPI, count: int) -> None:
    for i in range(count):
        fake.add_wheel(f"proj{i:03d}", "1.0")


def test_kill_9_in_the_middle_then_a_clean_second_run(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    many_projects(fake_pypi, 40)
    repo = tmp_path / "repo"
    config_path = write_config(
        tmp_path, repo, fake_pypi, sync={"concurrent_downloads": 2, "retry": 0}
    )
    fake_pypi.delay("/json", 0.1)
    process = subprocess.Popen(
        [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_serials(repo, 6, process)
    process.kill()
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL

    committed = set(serials(repo))
    assert 6 <= len(committed) < 40
    assert_complete(repo)
    assert not (repo / "simple" / "index.html").exists()  # never got that far
    for name in committed:  # a committed serial means its files are in place
        assert (repo / "json" / name).is_file()
        assert (repo / "simple" / name / "index.html").is_file()

    fake_pypi.clear_faults()
    fake_pypi.clear_requests()
    done = cli(config_path)
    assert done.returncode == 0, done.stderr
    refetched = set(json_fetches(fake_pypi))
    assert not refetched & committed
    assert refetched | committed == {f"proj{i:03d}" for i in range(40)}
    # A temporary file the kill cut short may remain, but only in the staging folder (never
    # beside a page); every real document equals what a fresh sync writes.
    staging = Path(".staging")
    stray = [k for k in tree(repo) if TEMP_PREFIX in k and staging not in Path(k).parents]
    assert stray == []
    visible = {k: v for k, v in tree(repo).items() if staging not in Path(k).parents}
    assert visible == fresh_copy(tmp_path, fake_pypi)
    assert_complete(repo)


def test_sigterm_stops_at_a_project_boundary(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    many_projects(fake_pypi, 30)
    repo = tmp_path / "repo"
    config_path = write_config(tmp_path, repo, fake_pypi, sync={"concurrent_downloads": 2})
    fake_pypi.delay("/json", 0.1)
    process = subprocess.Popen(
        [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_serials(repo, 4, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted" in out
    assert len(serials(repo)) < 30
    # Stopped cleanly: no temporary file left anywhere, every page whole.
    assert temp_files(repo) == []
    assert_complete(repo)


def test_a_second_sync_while_one_runs_does_nothing(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi)
    (tmp_path / "repo").mkdir()
    with open(tmp_path / "repo" / INDEX_LOCK, "a") as mine:  # what a running sync holds
        fcntl.flock(mine, fcntl.LOCK_EX)
        code, out = sync(config, capsys)
    assert code == 1
    assert "another sync is running" in out
    assert json_fetches(fake_pypi) == [] and not (tmp_path / "repo" / "simple" / "six").exists()
    assert sync(config)[0] == 0  # released


# -- the deletion cap and the dry run ------------------------------------------------------


def test_deletion_cap_aborts_before_deleting_anything(
    tmp_path: Path, fake_pypi: FakePyPI, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi, sync={"max_deletions": 1})
    assert sync(config)[0] == 0
    before = tree(tmp_path / "repo")
    fake_pypi.remove_project("six")
    fake_pypi.remove_project("foo-bar")
    fake_pypi.add_wheel("zope.interface", "7.0")
    fake_pypi.clear_requests()

    code, out = sync(config, capsys)
    assert code == 1
    assert "2 projects would be removed, more than sync.max_deletions (1)" in out
    assert "nothing was deleted" in out
    assert tree(tmp_path / "repo") == before
    assert json_fetches(fake_pypi) == []


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    populate(fake_pypi)
    repo = tmp_path / "repo"
    config_path = write_config(tmp_path, repo, fake_pypi)
    assert cli(config_path).returncode == 0
    fake_pypi.add_wheel("six", "1.17.0")
    fake_pypi.add_wheel("newcomer", "1.0")
    fake_pypi.remove_project("foo-bar")
    before_files = tree(repo)
    before_serials = serials(repo)
    fake_pypi.clear_requests()

    done = cli(config_path, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "new: 1: newcomer" in done.stdout
    assert "changed: 1: six" in done.stdout
    assert "removed: 1: foo-bar" in done.stdout
    assert tree(repo) == before_files
    assert serials(repo) == before_serials
    assert json_fetches(fake_pypi) == []

    # On an empty mirror not even the folder is created.
    empty = tmp_path / "never"
    done = cli(write_config(tmp_path, empty, fake_pypi), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "new: 3: newcomer, six, zope-interface" in done.stdout
    assert not empty.exists()


# -- serials source and the root index -----------------------------------------------------


def test_simple_json_serials_source(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    populate(fake_pypi)
    config = make_config(tmp_path / "repo", fake_pypi, upstream={"serials_source": "simple-json"})
    assert sync(config)[0] == 0
    assert fake_pypi.requests_matching("/pypi", "POST") == []
    # The root listed once (project pages are read too, for PEP 792/740 fields).
    assert [r.path for r in fake_pypi.requests_matching("/simple/")].count("/simple/") == 1
    assert set(serials(tmp_path / "repo")) == {"foo-bar", "six", "zope-interface"}
    root = orjson.loads((tmp_path / "repo" / "simple" / "index.v1.json").read_bytes())
    assert root["meta"]["_last-serial"] == fake_pypi.serial


def test_root_index_written_in_slices_equals_one_rendering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_dict({"repo_path": str(tmp_path / "repo")})
    repo = Repo(config)
    repo.create_folders()
    db = Database.in_repo(config.repo_path)
    projects = [(f"p{i:04d}", 1000 + i) for i in range(23)]
    for name, serial in projects:
        db.set_serial(name, serial)
    monkeypatch.setattr(root_module, "ROOT_CHUNK", 5)
    # What killed runs left behind: an old half-written page goes, a young one (perhaps a
    # live writer's) stays.
    repo.root_staging_dir.mkdir(parents=True)
    old_leftover = repo.root_staging_dir / f"{TEMP_PREFIX}dead-index.html"
    old_leftover.write_bytes(b"<html>half")
    os.utime(old_leftover, (time.time() - 3600, time.time() - 3600))
    young = repo.root_staging_dir / f"{TEMP_PREFIX}live-index.html"
    young.write_bytes(b"<html>being written")
    write_root_index(repo, db, 4242)
    assert not old_leftover.exists() and young.exists()
    young.unlink()
    assert repo.root_html.read_bytes() == render_root_html(n for n, _ in projects)
    assert repo.root_json.read_bytes() == render_root_json(projects, 4242)
    assert list(repo.root_staging_dir.iterdir()) == []
    assert gzip.decompress(repo.root_html_gz.read_bytes()) == repo.root_html.read_bytes()
    assert gzip.decompress(repo.root_json_gz.read_bytes()) == repo.root_json.read_bytes()
    # An empty index is still a valid page.
    empty = Repo(config_from_dict({"repo_path": str(tmp_path / "empty")}))
    empty.create_folders()
    write_root_index(empty, Database.in_repo(tmp_path / "empty"), 0)
    assert orjson.loads(empty.root_json.read_bytes())["projects"] == []
    assert empty.root_html.read_bytes() == render_root_html([])


# -- the mirror ends up as a fresh sync would leave it ---------------------------------------


@pytest.mark.parametrize("tuning", [FAST, POOLED], ids=["in-process", "pooled"])
def test_syncs_against_a_changing_upstream_equal_a_fresh_sync(
    tmp_path: Path, fake_pypi: FakePyPI, tuning: SyncTuning
) -> None:
    populate(fake_pypi)
    fake_pypi.add_wheel("doomed", "1.0")
    config = make_config(tmp_path / "repo", fake_pypi)
    assert sync(config, tuning=tuning)[0] == 0

    six = fake_pypi.files("six")[0]
    fake_pypi.add_wheel("six", "1.17.0")
    fake_pypi.yank("six", six.filename)
    fake_pypi.remove_project("doomed")
    fake_pypi.add_sdist("late-comer", "0.1")
    assert sync(config, tuning=tuning)[0] == 0

    fake_pypi.remove_file("foo-bar", fake_pypi.files("foo-bar")[0].filename)
    fake_pypi.unyank("six", six.filename)
    fake_pypi.add_wheel("zope.interface", "7.0")
    fake_pypi.quarantine("late-comer")
    assert sync(config, tuning=tuning)[0] == 0

    assert tree(tmp_path / "repo") == fresh_copy(tmp_path, fake_pypi)


def test_pip_and_uv_install_through_the_synced_mirror(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("demo-dep", "1.0")
    fake_pypi.add_wheel("Demo_Pkg", "2.0", dependencies=["demo-dep>=1"])
    repo = tmp_path / "repo"
    assert cli(write_config(tmp_path, repo, fake_pypi)).returncode == 0
    fake_pypi.clear_requests()
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        pip = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--no-compile", "--target",
                str(tmp_path / "pip-target"), "--index-url", mirror.simple, "demo-pkg",
            ],
            capture_output=True, text=True, env=client_env(), timeout=120,
        )  # fmt: skip
        assert pip.returncode == 0, pip.stderr
        uv = Path(sys.executable).with_name("uv")
        done = subprocess.run(
            [
                str(uv), "pip", "install", "--target", str(tmp_path / "uv-target"),
                "--index-url", mirror.simple, "demo-pkg",
            ],
            capture_output=True, text=True, env=client_env(), timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    # Pages came from the synced index: the upstream was asked for files only.
    assert json_fetches(fake_pypi) == []
    assert fake_pypi.requests_matching("/simple/") == []
    for target in ("pip-target", "uv-target"):
        assert (tmp_path / target / "Demo_Pkg-2.0.dist-info").is_dir()
        assert (tmp_path / target / "demo_dep-1.0.dist-info").is_dir()


# -- progress ------------------------------------------------------------------------------


def test_progress_logs_lines_when_not_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pypi_mirror.progress")
    with Progress("index sync", 10, unit="projects", interval=0.02, bar=False) as progress:
        progress.advance(4)
        deadline = time.monotonic() + 5
        while not any("4/10 projects (40.0%)" in r.message for r in caplog.records):
            assert time.monotonic() < deadline, "no periodic line"
            time.sleep(0.01)
        progress.advance(6)
    assert caplog.records[-1].message.startswith("index sync: 10/10 projects (100.0%)")
    assert "ETA" in next(r.message for r in caplog.records if "4/10" in r.message)


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "tty.txt"
    with (
        open(out, "w") as stream,
        Progress("index sync", 5, unit="projects", bar=True, stream=stream) as progress,
    ):
        progress.advance(5)
    text = out.read_text()
    assert "index sync" in text and "5/5" in text


def test_progress_without_a_total_counts_only() -> None:
    progress = Progress("listing the upstream", 0, unit="projects", bar=False)
    progress.advance(120_000)
    line = progress.line()
    assert line.startswith("listing the upstream: 120,000 projects, ")
    assert "ETA" not in line and "%" not in line


def test_stale_staging_leftovers_are_cleared(tmp_path: Path) -> None:
    repo = Repo(config_from_dict({"repo_path": str(tmp_path / "repo")}))
    repo.create_folders()
    old = repo.pages_staging_dir / f"{TEMP_PREFIX}0123-index.html"
    old.write_bytes(b"<html>half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    young = repo.pages_staging_dir / f"{TEMP_PREFIX}4567-index.html"
    young.write_bytes(b"<html>a live writer's")
    assert repo.clear_stale_staging() == 1
    assert not old.exists() and young.exists()
