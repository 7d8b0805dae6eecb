"""A throwaway real PostgreSQL server for tests: initdb into a private directory, started with
pg_ctl on 127.0.0.1 and a free port, removed again by ``close()``.

The binaries are Debian's ``postgresql`` package (``make test`` installs it when root). initdb
and postgres refuse to run as root, so as root they run as an unprivileged user through
``runuser``; the data directory is then owned by that user.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

# Settings for a disposable server: durability off (nothing here must survive a crash of the
# machine) and enough connections for pools in concurrent tests.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None when not installed."""

    def complete(d: Path) -> bool:
        return all(os.access(d / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))

    # pg_config may be libpq-dev's for another major version than the server: check its answer.
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and complete(Path(out)):
            return Path(out)
    # Debian keeps each major version under /usr/lib/postgresql/N/bin, off PATH: newest first.
    versions = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        with contextlib.suppress(ValueError):
            versions.append((float(d.parent.name), d))
    for _, d in sorted(versions, reverse=True):
        if complete(d):
            return d
    initdb = shutil.which("initdb")
    if initdb:
        d = Path(initdb).resolve().parent
        if complete(d):
            return d
    return None


def make_base_dir() -> Path:
    """A fresh, world-traversable directory for a server. Under /tmp, not pytest's tmp_path:
    pytest's directories are 0o700 (the unprivileged server user could not enter them) and
    often deep, while a unix socket path must stay under ~107 bytes."""
    parent = "/tmp" if os.path.isdir("/tmp") else None
    base = Path(tempfile.mkdtemp(prefix="pypi-mirror-pg-", dir=parent))
    base.chmod(0o755)
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return "nobody"


class PostgresServer:
    def __init__(self, base: Path, bindir: Path | None = None) -> None:
        self.base = Path(base)
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "log"
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(
                "PostgreSQL server binaries not found: install Debian's postgresql package"
            )
        self.bindir = found
        self.port = 0  # chosen by init(), then kept so URLs stay valid across restarts
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        self._closed = False
        atexit.register(self.close)  # never leave a postgres behind, even if a fixture is skipped

    # -- running the binaries ---------------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # cwd=base: the server user may not be able to enter our cwd (e.g. /root).
        proc = subprocess.run(cmd, cwd=self.base, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-30:]
        except OSError:
            return ""
        return "\n--- server log (tail) ---\n" + "\n".join(lines)

    def _give_to_user(self) -> None:
        """As root: hand base to the server user and make sure it can reach base at all."""
        assert self.user is not None
        pw = pwd.getpwnam(self.user)
        for parent in self.base.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)  # traverse only, no listing
        for path in [self.base, *self.base.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)

    # -- lifecycle ----------------------------------------------------------------------------

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self.user is not None:
            self._give_to_user()
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self.port = free_port()
        # In postgresql.conf rather than pg_ctl -o: no quoting of paths, and a restart (or a
        # plain `pg_ctl start` by hand when debugging) gets the same port and socket.
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": "'" + str(self.sock).replace("'", "''") + "'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pgserver.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    @property
    def is_running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        # 0: running; 3: not running (pg_ctl also checks that the pid in postmaster.pid lives).
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            if self.is_running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- databases ----------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin_execute(self, statement: str, name: str) -> None:
        # Imported here so the rest of the suite still loads where psycopg is not installed.
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(sql.Identifier(name))
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=30) as conn:
            conn.execute(query)

    def create_database(self, name: str) -> str:
        self._admin_execute("CREATE DATABASE {}", name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        # FORCE ends the test's leftover connections (pools, crashed clients) first.
        self._admin_execute("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
