"""``filters:`` (deny_projects, cache_exclude) through real `sync` and `serve` against the
fake upstream, and the config checks."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from pypi_mirror.config import ConfigError, config_from_dict
from pypi_mirror.db import Database
from pypi_mirror.filters import Filters, FiltersConfig
from pypi_mirror.names import project_of
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http
from tests.test_index_sync import make_config, sync

V1_JSON = "application/vnd.pypi.simple.v1+json"
DENY = {"filters": {"deny_projects": ["evil*"]}}
WIN = "native-1.0-cp312-cp312-win_amd64.whl"
LINUX = "native-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("evil-pkg", "1.0")
    fake_pypi.add_wheel("plain", "2.0")
    content = fake_pypi.file("plain", "plain-2.0-py3-none-any.whl").content
    fake_pypi.add_file("native", "1.0", WIN, content)
    fake_pypi.add_file("native", "1.0", LINUX, content + b"\0")
    return fake_pypi


def vote(repo: Path, paths: list[str]) -> None:
    db = Database.in_repo(repo)
    now = time.time()
    db.add_votes([(p, f"10.0.{i}.0/24", now) for p in paths for i in range(3)], dedup_window=300)
    db.close()


def place(repo: Path, path: str, content: bytes) -> Path:
    cached = repo / "packages" / path
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(content)
    return cached


def root_names(repo: Path) -> set[str]:
    doc = orjson.loads((repo / "simple" / "index.v1.json").read_bytes())
    return {entry["name"] for entry in doc["projects"]}


def test_units() -> None:
    filters = Filters(
        FiltersConfig(deny_projects=["Evil_*"], cache_exclude={"platforms": ["win_*", "macosx_*"]})
    )
    assert filters.denies("evil-pkg") and not filters.denies("plain")
    assert filters.path_denied("ab/cd/ef/evil_pkg-1.0-py3-none-any.whl.metadata")
    assert filters.path_denied("ab/cd/ef/Evil.Pkg-1.0.tar.gz")
    assert not filters.path_denied("ab/cd/ef/plain-1.0.tar.gz")
    assert filters.cache_excluded(f"ab/cd/ef/{WIN}")
    assert filters.cache_excluded("x/y-1.0-cp39-cp39-macosx_10_9_x86_64.macosx_11_0_arm64.whl")
    assert not filters.cache_excluded(f"ab/cd/ef/{LINUX}")
    assert not filters.cache_excluded("x/y-1.0-py3-none-any.whl")
    assert not filters.cache_excluded("x/y-1.0.tar.gz")
    assert project_of("Old_Thing-0.1-py2.7.egg") == "old-thing"
    types = Filters(FiltersConfig(cache_exclude={"types": ["sdist"], "pythons": ["cp2*"]}))
    assert types.cache_excluded("x/y-1.0.tar.gz") and not types.cache_excluded(f"x/{WIN}")
    assert types.cache_excluded("x/y-1.0-cp27-cp27mu-manylinux1_x86_64.whl")


@pytest.mark.parametrize(
    ("filters", "key"),
    [
        ({"deny_projects": ["bad name"]}, "filters.deny_projects"),
        ({"cache_exclude": {"types": ["egg"]}}, "filters.cache_exclude.types"),
        ({"cache_exclude": {"platforms": ["win/*"]}}, "filters.cache_exclude.platforms"),
        ({"deny": ["x"]}, "filters.deny"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, filters: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"repo_path": str(tmp_path), "filters": filters})


def test_denied_project_is_never_synced_and_removed_at_sync(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    repo = tmp_path / "repo"
    assert sync(make_config(repo, upstream))[0] == 0  # held before the filter is set
    assert "evil-pkg" in root_names(repo)
    wheel = upstream.file("evil-pkg", "evil_pkg-1.0-py3-none-any.whl")
    plain = upstream.file("plain", "plain-2.0-py3-none-any.whl")
    cached = place(repo, wheel.path, wheel.content)
    vote(repo, [wheel.path, plain.path])

    config = make_config(repo, upstream, **DENY)
    assert sync(config)[0] == 0
    assert not cached.exists()
    assert not (repo / "simple" / "evil-pkg").exists()
    assert root_names(repo) == {"plain", "native"}
    assert (repo / "packages" / plain.path).is_file()  # the control: votes bring it in

    # A fresh mirror with the filter never asks for the project at all.
    fresh = tmp_path / "fresh"
    upstream.clear_requests()
    assert sync(make_config(fresh, upstream, **DENY))[0] == 0
    assert not (fresh / "simple" / "evil-pkg").exists()
    assert not [r for r in upstream.requests if "evil" in r.path]


def test_denied_project_404s_on_pages_and_files(tmp_path: Path, upstream: FakePyPI) -> None:
    wheel = upstream.file("evil-pkg", "evil_pkg-1.0-py3-none-any.whl")
    plain = upstream.file("plain", "plain-2.0-py3-none-any.whl")
    with Mirror(tmp_path, upstream.url, upstream.files_url, **DENY) as mirror:
        place(mirror.repo, wheel.path, wheel.content)  # cached before the filter was set
        upstream.clear_requests()
        assert http(mirror.simple + "evil-pkg/").status == 404
        assert http(mirror.simple + "evil-pkg/", headers={"Accept": V1_JSON}).status == 404
        assert http(mirror.base + "/pypi/evil-pkg/json").status == 404
        assert http(mirror.base + "/packages/" + wheel.path).status == 404
        assert http(mirror.base + "/packages/" + wheel.path + ".metadata").status == 404
        assert not [r for r in upstream.requests if "evil" in r.path]  # never fetched
        assert http(mirror.simple + "plain/").status == 200
        assert http(mirror.base + "/packages/" + plain.path).status == 302


def test_cache_exclude_keeps_windows_wheels_out_but_listed(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    repo = tmp_path / "repo"
    exclude = {"filters": {"cache_exclude": {"platforms": ["win_*", "macosx_*"]}}}
    config = make_config(repo, upstream, **exclude)
    win = upstream.file("native", WIN)
    linux = upstream.file("native", LINUX)
    assert sync(config)[0] == 0
    old = place(repo, win.path, win.content)  # cached before the rule: removed
    vote(repo, [win.path, linux.path])
    assert sync(config)[0] == 0
    assert (repo / "packages" / linux.path).is_file()
    assert not old.exists()
    assert not (repo / "packages" / win.path).exists()
    doc = orjson.loads((repo / "simple" / "native" / "index.v1.json").read_bytes())
    assert {f["filename"] for f in doc["files"]} == {WIN, LINUX}
    with Mirror(tmp_path, upstream.url, upstream.files_url, repo_path=str(repo), **exclude) as m:
        assert WIN in http(m.simple + "native/").body.decode()
        assert http(m.base + "/packages/" + win.path).status == 302
        assert http(m.base + "/packages/" + linux.path).status == 200


def test_pip_cannot_install_a_denied_project(tmp_path: Path, upstream: FakePyPI) -> None:
    import subprocess

    from tests.test_clients import installed_versions, pip_install

    target = tmp_path / "site"
    with Mirror(tmp_path, upstream.url, upstream.files_url, **DENY) as mirror:
        with pytest.raises(subprocess.CalledProcessError):
            pip_install(mirror, target, "evil-pkg")
        pip_install(mirror, target, "plain")
    assert installed_versions(target) == {"plain-2.0"}


def test_prewarm_skips_files_the_filters_keep_out(tmp_path: Path, upstream: FakePyPI) -> None:
    import subprocess
    import sys

    win = upstream.file("native", WIN)
    linux = upstream.file("native", LINUX)
    config = {"filters": {"cache_exclude": {"platforms": ["win_*"]}}}
    mirror = Mirror(tmp_path, upstream.url, upstream.files_url, **config)
    lock = tmp_path / "requirements.txt"
    lock.write_text(f"native==1.0 --hash=sha256:{win.sha256} --hash=sha256:{linux.sha256}\n")
    done = subprocess.run(
        [sys.executable, "-m", "pypi_mirror", "cache", "prewarm", str(lock),
         "-c", str(mirror.config_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout and "1 downloaded" in done.stdout, done.stdout
    assert (mirror.repo / "packages" / linux.path).is_file()
    assert not (mirror.repo / "packages" / win.path).exists()


def test_sync_removes_filtered_files_even_without_votes(tmp_path: Path, upstream: FakePyPI) -> None:
    repo = tmp_path / "repo"
    exclude = {"filters": {"cache_exclude": {"platforms": ["win_*"]}}}
    win = upstream.file("native", WIN)
    linux = upstream.file("native", LINUX)
    excluded = place(repo, win.path, win.content)
    kept = place(repo, linux.path, linux.content)
    assert sync(make_config(repo, upstream, **exclude))[0] == 0  # an empty vote table
    assert not excluded.exists()
    assert kept.is_file()  # no votes: the rest of the cache is left as it is
