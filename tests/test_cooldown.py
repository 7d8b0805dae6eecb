"""``policy.min_age`` (cooldown) through real `sync` and `serve` against the fake upstream:
too-new files are left out of both page formats and refused on every download path."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pypi_mirror.config import ConfigError, config_from_dict
from pypi_mirror.repo import Repo
from pypi_mirror.server.cooldown import Cooldown
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http
from tests.test_index_sync import make_config, sync

V1_JSON = "application/vnd.pypi.simple.v1+json"
POLICY = {"policy": {"min_age": "7d", "min_age_exempt": ["Trusted_Pkg"]}}
OLD = datetime.now(UTC) - timedelta(days=30)


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("demo", "1.0", upload_time=OLD)
    fake_pypi.add_wheel("demo", "2.0")  # uploaded now
    fake_pypi.add_wheel("trusted-pkg", "3.0")
    return fake_pypi


def filenames(doc: dict) -> set[str]:
    return {f["filename"] for f in doc["files"]}


def check_pages(mirror: Mirror) -> None:
    doc = http(mirror.simple + "demo/", headers={"Accept": V1_JSON}).json()
    assert filenames(doc) == {"demo-1.0-py3-none-any.whl"}
    assert doc["versions"] == ["1.0"]  # PEP 700: 2.0 has no file left
    html = http(mirror.simple + "demo/").body.decode()
    assert "demo-1.0-py3-none-any.whl" in html and "demo-2.0" not in html
    trusted = http(mirror.simple + "trusted-pkg/", headers={"Accept": V1_JSON}).json()
    assert filenames(trusted) == {"trusted_pkg-3.0-py3-none-any.whl"}
    api = http(mirror.base + "/pypi/demo/json").json()  # the JSON API: the hour's cutoff
    assert set(api["releases"]) == {"1.0"} and api["urls"] == []
    assert http(mirror.base + "/pypi/trusted-pkg/json").json()["urls"]


def test_synced_pages_and_local_and_302_paths(tmp_path: Path, upstream: FakePyPI) -> None:
    repo = tmp_path / "repo"
    assert sync(make_config(repo, upstream, **POLICY))[0] == 0
    fresh = upstream.file("demo", "demo-2.0-py3-none-any.whl")
    old = upstream.file("demo", "demo-1.0-py3-none-any.whl")
    trusted = upstream.file("trusted-pkg", "trusted_pkg-3.0-py3-none-any.whl")
    cached = repo / "packages" / fresh.path
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(fresh.content)
    with Mirror(tmp_path, upstream.url, upstream.files_url, repo_path=str(repo), **POLICY) as m:
        check_pages(m)
        assert http(m.base + "/packages/" + fresh.path).status == 404  # local copy
        assert http(m.base + "/packages/" + fresh.path + ".metadata").status == 404
        assert http(m.base + "/packages/" + old.path).status == 302
        assert http(m.base + "/packages/" + trusted.path).status == 302
        cached.unlink()
        assert http(m.base + "/packages/" + fresh.path).status == 404  # the 302 path


def test_on_demand_pages_and_the_proxy_path(tmp_path: Path, upstream: FakePyPI) -> None:
    fresh = upstream.file("demo", "demo-2.0-py3-none-any.whl")
    old = upstream.file("demo", "demo-1.0-py3-none-any.whl")
    proxy = {"fallback": {"default": "proxy"}}
    with Mirror(tmp_path, upstream.url, upstream.files_url, **POLICY, **proxy) as m:
        check_pages(m)
        assert http(m.base + "/packages/" + fresh.path).status == 404
        reply = http(m.base + "/packages/" + old.path)
        assert reply.status == 200 and reply.body == old.content


def write_page(repo: Repo, name: str, files: list[tuple[str, str | None]]) -> None:
    folder = repo.project_json(name).parent
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"filename": f, "upload-time": t} for f, t in files]
    page = {"name": name, "files": entries, "versions": ["1.0", "2.0"]}
    repo.project_json(name).write_bytes(orjson.dumps(page))


def test_no_upload_time_is_new_and_files_age_in(tmp_path: Path) -> None:
    repo = Repo(config_from_dict({"repo_path": str(tmp_path)}))
    almost = datetime.fromtimestamp(time.time() - 1.2, UTC).isoformat().replace("+00:00", "Z")
    write_page(repo, "demo", [("demo-1.0.tar.gz", None), ("demo-2.0.tar.gz", almost)])
    cooldown = Cooldown(repo, 2.0, [])
    assert cooldown.refuses("ab/cd/ef/demo-1.0.tar.gz")  # no upload time: new
    assert cooldown.refuses("ab/cd/ef/demo-2.0.tar.gz")
    assert cooldown.refuses("ab/cd/ef/other-1.0.tar.gz")  # page not held: new
    path = repo.project_json("demo")
    body, st = path.read_bytes(), os.stat(path)
    assert orjson.loads(cooldown.page("demo", st, body, True) or b"{}")["files"] == []
    time.sleep(1.0)  # 2.0 comes of age, without a new page
    doc = orjson.loads(cooldown.page("demo", st, body, True) or b"{}")
    assert filenames(doc) == {"demo-2.0.tar.gz"} and doc["versions"] == ["2.0"]
    assert not cooldown.refuses("ab/cd/ef/demo-2.0.tar.gz")
    assert not Cooldown(repo, 2.0, ["demo"]).refuses("ab/cd/ef/demo-1.0.tar.gz")


def test_config_errors(tmp_path: Path) -> None:
    for policy, key in (
        ({"min_age": "soon"}, "policy.min_age"),
        ({"min_age_exempt": ["a b"]}, "policy.min_age_exempt"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_dict({"repo_path": str(tmp_path), "policy": policy})


def test_pip_installs_the_newest_file_old_enough(tmp_path: Path, upstream: FakePyPI) -> None:
    from tests.test_clients import installed_versions, pip_install

    target = tmp_path / "site"
    with Mirror(tmp_path, upstream.url, upstream.files_url, **POLICY) as mirror:
        pip_install(mirror, target, "demo", "trusted-pkg")
    assert installed_versions(target) == {"demo-1.0", "trusted_pkg-3.0"}


def test_uv_exclude_newer_agrees_with_the_server(tmp_path: Path, upstream: FakePyPI) -> None:
    """What uv resolves through the mirror's cooldown is what `uv --exclude-newer` resolves
    from the upstream itself, with the same cutoff."""
    import subprocess
    import sys

    from tests.mirror import client_env
    from tests.test_clients import UV, installed_versions, uv_install

    through_mirror = tmp_path / "mirror-site"
    with Mirror(tmp_path, upstream.url, upstream.files_url, **POLICY) as mirror:
        uv_install(mirror, through_mirror, "demo")
    cutoff = (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    direct = tmp_path / "direct-site"
    subprocess.run(
        [UV, "pip", "install", "--no-cache", "--index-url", f"{upstream.url}/simple/",
         "--exclude-newer", cutoff, "--target", str(direct), "--python", sys.executable,
         "demo"],
        check=True, env=client_env(), timeout=180,
    )  # fmt: skip
    assert installed_versions(through_mirror) == installed_versions(direct) == {"demo-1.0"}
