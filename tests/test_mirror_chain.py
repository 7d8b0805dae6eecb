"""A mirror of this mirror: mirror B syncs from mirror A's base URL (as from PyPI, by XML-RPC
or by the PEP 691 root index), lists the same files, and pip/uv fetch every file through A."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, client_env, http

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
V1_JSON = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("base-lib", "1.0")
    fake_pypi.add_wheel("top-app", "0.5", dependencies=["base-lib>=1.0"])
    fake_pypi.add_sdist("top-app", "0.5")
    fake_pypi.add_wheel("other-thing", "3.0")
    return fake_pypi


def run_sync(mirror: Mirror) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(mirror.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=mirror.tmp,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def listed(mirror: Mirror, name: str) -> dict[str, str]:
    page = http(f"{mirror.simple}{name}/", headers={"Accept": V1_JSON})
    assert page.status == 200, (name, page.status)
    return {f["filename"]: f["hashes"]["sha256"] for f in page.json()["files"]}


def downloaded_through(mirror: Mirror) -> set[str]:
    prefix = "/pypi/packages/"
    return {
        entry["path"][len(prefix) :]
        for entry in mirror.log_entries()
        if entry["path"].startswith(prefix) and entry["method"] == "GET"
    }


@pytest.mark.parametrize("source", ["xmlrpc", "simple-json"])
def test_mirror_of_mirror(tmp_path: Path, upstream: FakePyPI, source: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Mirror(tmp_path / "a", upstream.url, upstream.files_url) as a:
        run_sync(a)
        root = http(a.simple)
        assert root.status == 200
        assert root.headers["cache-control"] == "max-age=600, public"
        assert root.headers["access-control-allow-origin"] == "*"
        names = ["base-lib", "top-app", "other-thing"]
        with Mirror(tmp_path / "b", a.base, a.base, upstream={"serials_source": source}) as b:
            run_sync(b)
            asked = {(e["method"], e["path"]) for e in a.log_entries()}
            if source == "xmlrpc":
                assert ("POST", "/pypi/pypi") in asked
            else:
                assert ("GET", "/pypi/simple/") in asked
            assert ("GET", "/pypi/pypi/top-app/json") in asked
            for name in names:
                assert listed(b, name) == listed(a, name)
                assert (b.repo / "json" / name).is_file()
            # installers through B: every file comes from A (B redirects to A's /packages/)
            target = tmp_path / "dl"
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-cache-dir",
                 "--index-url", b.simple, "-d", str(target), "top-app"],
                check=True, env=client_env(), timeout=180,
            )  # fmt: skip
            got = {p.name for p in target.iterdir()}
            assert got == {"top_app-0.5-py3-none-any.whl", "base_lib-1.0-py3-none-any.whl"}
            expected = {upstream.file("top-app", n).path for n in got if n.startswith("top")}
            expected |= {upstream.file("base-lib", n).path for n in got if n.startswith("base")}
            assert expected <= downloaded_through(a)
            assert UV, "uv is a test dependency"
            if UV:
                site = tmp_path / "site"
                subprocess.run(
                    [UV, "pip", "install", "--no-cache", "--index-url", b.base + "/simple//",
                     "--target", str(site), "--python", sys.executable, "top-app"],
                    check=True, env=client_env(), timeout=180,
                )  # fmt: skip
                assert (site / "top_app").exists() or list(site.glob("top_app*"))
