"""bandersnatch mirrors a few allowlisted projects from this mirror, with the mirror's base URL
as its master (XML-RPC serials, the JSON API, files at /packages/…); its files' sha256 match.

bandersnatch accepts only file URLs whose path starts with /packages: the JSON API gives them
at the host's root, as PyPI does, and the mirror serves them there as well as under its
prefix (the default /pypi here). bandersnatch is installed into its own venv under the test's
tmp dir; the test is skipped when it cannot be installed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, client_env

CONFIG = """[mirror]
directory = {directory}
master = {master}
allow-non-https = true
json = true
timeout = 10
global-timeout = 120
workers = 1
hash-index = false
simple-format = ALL
stop-on-error = true
storage-backend = filesystem
verifiers = 1
compare-method = hash
release-files = true

[plugins]
enabled =
    allowlist_project

[allowlist]
packages =
    base-lib
    top-app
"""


def install_bandersnatch(where: Path) -> Path:
    venv = where / "bs-venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "bandersnatch"],
            check=True,
            timeout=300,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"bandersnatch cannot be installed here: {error}")
    return venv / "bin" / "bandersnatch"


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("base-lib", "1.0")
    fake_pypi.add_wheel("top-app", "0.5", dependencies=["base-lib>=1.0"])
    fake_pypi.add_sdist("top-app", "0.5")
    fake_pypi.add_wheel("not-wanted", "1.0")
    return fake_pypi


def test_bandersnatch_mirrors_from_this_mirror(tmp_path: Path, upstream: FakePyPI) -> None:
    bandersnatch = install_bandersnatch(tmp_path)
    (tmp_path / "a").mkdir()
    with Mirror(tmp_path / "a", upstream.url, upstream.files_url) as mirror:
        done = subprocess.run(
            [sys.executable, "-m", "pypi_mirror", "sync", "-c", str(mirror.config_path)],
            capture_output=True, text=True, timeout=120, cwd=mirror.tmp,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        directory = tmp_path / "bs"
        config = tmp_path / "bandersnatch.conf"
        config.write_text(CONFIG.format(directory=directory, master=mirror.base))
        run = subprocess.run(
            [str(bandersnatch), "--config", str(config), "mirror"],
            capture_output=True, text=True, timeout=300, env=client_env(),
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
    wanted = [f for name in ("base-lib", "top-app") for f in upstream.files(name)]
    for file in wanted:
        local = directory / "web" / "packages" / file.path
        assert local.is_file(), file.path
        assert hashlib.sha256(local.read_bytes()).hexdigest() == file.sha256
    assert not list((directory / "web" / "packages").rglob("not_wanted*"))
    assert (directory / "web" / "simple" / "top-app" / "index.html").is_file()
