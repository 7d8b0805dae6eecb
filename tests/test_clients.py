"""Real pip and real uv install packages through the mirror (redirect and proxy modes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, client_env

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("base-lib", "1.0")
    fake_pypi.add_wheel("base-lib", "2.0", yanked="broken")
    fake_pypi.add_wheel("top-app", "0.5", dependencies=["base-lib>=1.0"])
    fake_pypi.add_sdist("top-app", "0.5")
    return fake_pypi


def pip_install(mirror: Mirror, target: Path, *packages: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir",
         "--index-url", mirror.simple, "--target", str(target), *packages],
        check=True, env=client_env(), timeout=180,
    )  # fmt: skip


def uv_install(mirror: Mirror, target: Path, *packages: str) -> None:
    assert UV, "uv is a test dependency (pip install -e '.[test]')"
    subprocess.run(
        [UV, "pip", "install", "--no-cache", "--index-url", mirror.simple,
         "--target", str(target), "--python", sys.executable, *packages],
        check=True, env=client_env(), timeout=180,
    )  # fmt: skip


def installed_versions(target: Path) -> set[str]:
    return {p.name.removesuffix(".dist-info") for p in target.glob("*.dist-info")}


def expected_downloads(upstream: FakePyPI) -> set[str]:
    return {
        upstream.file("base-lib", "base_lib-1.0-py3-none-any.whl").path,
        upstream.file("top-app", "top_app-0.5-py3-none-any.whl").path,
    }


@pytest.mark.parametrize("mode", ["302", "proxy"])
@pytest.mark.parametrize("client", ["pip", "uv"])
def test_client_installs_through_mirror(
    tmp_path: Path, upstream: FakePyPI, mode: str, client: str
) -> None:
    target = tmp_path / "site"
    with Mirror(tmp_path, upstream.url, upstream.files_url, fallback={"default": mode}) as mirror:
        (pip_install if client == "pip" else uv_install)(mirror, target, "top-app")
        assert installed_versions(target) == {"top_app-0.5", "base_lib-1.0"}
        assert (target / "top_app" / "__init__.py").read_text().count("0.5") == 1
        # every wheel download went through the mirror and was voted for
        voted = mirror.wait_for(
            lambda: {path for path, _ in mirror.votes()} >= expected_downloads(upstream)
        )
        assert voted
        entries = mirror.log_entries()
    wheel_entries = [e for e in entries if e["path"].endswith(".whl")]
    assert wheel_entries
    for entry in wheel_entries:
        assert entry["status"] == (302 if mode == "302" else 200)
        assert entry["proxied"] == ("1" if mode == "proxy" else "0")
        assert entry["user_agent"].startswith(client)
    downloads = upstream.requests_matching("/files/packages/", method="GET")
    assert {
        r.path.removeprefix("/files/packages/") for r in downloads if r.path.endswith(".whl")
    } == expected_downloads(upstream)


def test_client_installs_from_local_cache_without_upstream_files(
    tmp_path: Path, upstream: FakePyPI
) -> None:
    with Mirror(tmp_path, upstream.url, upstream.files_url) as mirror:
        for path in expected_downloads(upstream):
            file = next(
                f for p in ("base-lib", "top-app") for f in upstream.files(p) if f.path == path
            )
            target = mirror.repo / "packages" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.content)
            assert file.metadata is not None  # the cache keeps voted .metadata files too
            target.with_name(target.name + ".metadata").write_bytes(file.metadata)
        upstream.fail("/files/", status=500, times=None)  # the file host is down
        pip_install(mirror, tmp_path / "site", "top-app")
    assert installed_versions(tmp_path / "site") == {"top_app-0.5", "base_lib-1.0"}
