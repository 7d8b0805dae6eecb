"""`pypi-mirror db migrate`, credentials from the environment, a schema newer than the
program, and a node started while its PostgreSQL is down: through the real commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pypi_mirror.db.schema import MIGRATIONS
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http
from tests.pgserver import PostgresServer

CURRENT = len(MIGRATIONS)


def write_config(folder: Path, **settings: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"repo_path": str(folder / "repo"), **settings}))
    return path


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", *args, "-c", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent, env=env,
    )  # fmt: skip


def test_migrate_creates_then_reports_current_on_sqlite(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = cli(config, "db", "migrate")
    assert first.returncode == 0, first.stderr
    assert f"schema migrated from version 0 to {CURRENT}" in first.stdout
    assert (tmp_path / "repo" / "pypi-mirror.db").is_file()
    again = cli(config, "db", "migrate")
    assert again.returncode == 0
    assert f"schema version {CURRENT}, current; nothing to do" in again.stdout


def test_migrate_on_postgresql_with_credentials_from_the_environment(
    tmp_path: Path, postgres_server: PostgresServer, pg_url: str
) -> None:
    dbname = pg_url.rsplit("/", 1)[1]
    config = write_config(tmp_path, database={"url": f"postgresql:///{dbname}"})
    env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres_server.port),
        "PGUSER": "postgres",
    }
    done = cli(config, "db", "migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert f"PostgreSQL postgresql:///{dbname}: schema migrated from version 0 to {CURRENT}" in (
        done.stdout
    )
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (CURRENT,)
    checked = cli(config, "check", "--offline", env=env)
    assert f"ok   database.url: PostgreSQL postgresql:///{dbname} answers (schema version " in (
        checked.stdout
    )
    # Without the environment libpq looks for a local socket that is not there: one line.
    env_less = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env_less["PGHOST"] = str(tmp_path / "no-socket-here")
    failed = cli(config, "db", "migrate", env=env_less)
    assert failed.returncode == 1
    assert "cannot migrate" in failed.stderr and "Traceback" not in failed.stderr


def test_a_schema_newer_than_the_program_is_refused_by_every_command(
    tmp_path: Path, pg_url: str, fake_pypi: FakePyPI
) -> None:
    config = write_config(tmp_path, database={"url": pg_url})
    assert cli(config, "db", "migrate").returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (CURRENT + 1,))
    migrate = cli(config, "db", "migrate")
    assert migrate.returncode == 1
    assert f"holds schema version {CURRENT + 1}, newer than this pypi-mirror's" in migrate.stderr
    status = cli(config, "status")
    assert status.returncode == 1 and "upgrade pypi-mirror" in (status.stdout + status.stderr)
    (tmp_path / "node").mkdir()
    mirror = Mirror(tmp_path / "node", fake_pypi.url, fake_pypi.files_url, database={"url": pg_url})
    with pytest.raises(RuntimeError, match="upgrade pypi-mirror on this node"):
        mirror.start()
    assert mirror.process is not None and mirror.process.wait(10) == 2


def test_a_node_started_while_postgresql_is_down_serves_and_says_why(
    tmp_path: Path, fake_pypi: FakePyPI, pg_server_private: PostgresServer
) -> None:
    url = pg_server_private.create_database("mirror")
    wheel = fake_pypi.add_wheel("local-pkg", "1.0")
    tier = tmp_path / "tier"
    (tier / wheel.path).parent.mkdir(parents=True)
    (tier / wheel.path).write_bytes(wheel.content)
    (tmp_path / "node").mkdir()
    mirror = Mirror(
        tmp_path / "node",
        fake_pypi.url,
        fake_pypi.files_url,
        database={"url": url},
        cache={"tiers": [{"path": str(tier), "size_limit": "1g"}]},
    )
    with mirror:  # a first start writes the root index (as on a shared repo of a live mirror)
        pass
    pg_server_private.stop("fast")
    with mirror:
        reply = http(f"{mirror.base}/packages/{wheel.path}", headers={"User-Agent": "pip/24"})
        assert (reply.status, reply.body) == (200, wheel.content)
        page = http(f"{mirror.simple}local-pkg/", headers={"Accept": "text/html"})
        assert page.status == 200 and wheel.filename.encode() in page.body  # fetched on demand
        ready = http(f"{mirror.base}/ready")
        assert ready.status == 200 and ready.body.startswith(b"ready, degraded:"), ready.body
        checked = cli(mirror.config_path, "check", "--offline")
        assert checked.returncode == 1 and "FAIL database.url: PostgreSQL" in checked.stdout
        sync = cli(mirror.config_path, "sync")
        assert sync.returncode == 1
        assert "database error" in sync.stderr and "Traceback" not in sync.stderr
        pg_server_private.start()
        # Back: the vote taken while it was down is stored, and /ready is plain again.
        with psycopg.connect(url) as conn:
            assert mirror.wait_for(
                lambda: conn.execute("SELECT COUNT(*) FROM votes").fetchone() == (1,), 10
            )
        ready_again = mirror.wait_for(lambda: http(f"{mirror.base}/ready").body == b"ready\n", 10)
        assert ready_again, http(f"{mirror.base}/ready").body
    assert "Traceback" not in mirror.stderr()
