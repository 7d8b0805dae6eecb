"""contrib/: the systemd units pass `systemd-analyze verify` and the logrotate configuration
rotates and reloads (each where the tool is installed; skipped with the reason otherwise)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
UNITS = ("pypi-mirror.service", "pypi-mirror-sync.service", "pypi-mirror-sync.timer")
INSTALLED = "/opt/pypi-mirror/.venv/bin/pypi-mirror"


def test_units_say_what_the_readme_promises() -> None:
    serve = (CONTRIB / "pypi-mirror.service").read_text()
    sync = (CONTRIB / "pypi-mirror-sync.service").read_text()
    timer = (CONTRIB / "pypi-mirror-sync.timer").read_text()
    assert f"ExecStart={INSTALLED} serve -c /etc/pypi-mirror/config.yaml" in serve
    assert "ExecReload=/bin/kill -USR1 $MAINPID" in serve
    assert "RestartPreventExitStatus=2" in serve
    for unit in (serve, sync):
        for line in ("User=pypi-mirror", "NoNewPrivileges=yes", "ProtectSystem=strict"):
            assert line in unit
    assert "ReadWritePaths=/srv/repo/pypi /var/log/pypi-mirror" in serve
    assert "Type=oneshot" in sync and "TimeoutStartSec=infinity" in sync
    for line in ("OnCalendar=hourly", "Persistent=true", "RandomizedDelaySec="):
        assert line in timer
    rotate = (CONTRIB / "logrotate" / "pypi-mirror").read_text()
    assert "systemctl reload pypi-mirror.service" in rotate


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart to exist: point it at this checkout's program.
    program = str(Path(sys.executable).with_name("pypi-mirror"))
    for name in UNITS:
        text = (CONTRIB / name).read_text().replace(INSTALLED, program)
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(f"./{name}" for name in UNITS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_logrotate_rotates_and_reloads(tmp_path: Path) -> None:
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed")
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "access.log").write_text('{"status":200}\n')
    marker = tmp_path / "reloaded"
    text = (
        (CONTRIB / "logrotate" / "pypi-mirror")
        .read_text()
        .replace("/var/log/pypi-mirror", str(logs))
        .replace("create 0640 pypi-mirror pypi-mirror", "create 0640")  # no such user here
        .replace("systemctl reload pypi-mirror.service", f"touch {marker}")
    )
    config = tmp_path / "logrotate.conf"
    config.write_text(text)
    done = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (logs / "access.log.1").read_text() == '{"status":200}\n'
    assert (logs / "access.log").read_text() == ""
    assert marker.exists()
