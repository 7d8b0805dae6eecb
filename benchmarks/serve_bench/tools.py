"""Finding (and, when missing, installing) the programs the benchmark drives."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk"}


def ensure_apt_programs() -> dict[str, str]:
    """Paths of nginx and wrk; installs the Debian packages once if either is missing."""
    found = {name: _which(name) for name in APT_PACKAGES}
    missing = [APT_PACKAGES[name] for name, path in found.items() if path is None]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing {', '.join(missing)}: run `sudo apt-get install -y ...`")
        print(f"installing {', '.join(missing)} with apt-get", flush=True)
        quiet = {
            "stdout": subprocess.DEVNULL,
            "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        }
        subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, **quiet)
        found = {name: _which(name) for name in APT_PACKAGES}
    return {name: path for name, path in found.items() if path is not None}


def _which(name: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-login root shell may not have on PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def mirror_python() -> str:
    """The project's virtual environment if there is one, else the Python running us."""
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def ensure_py_spy(python: str) -> str:
    """py-spy next to the mirror's Python (installed from PyPI into that environment)."""
    candidate = Path(python).parent / "py-spy"
    if not candidate.exists():
        print("installing py-spy into the mirror's environment", flush=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(candidate)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
