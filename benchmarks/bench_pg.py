"""A PostgreSQL server of the benchmarks' own, in ``benchmarks/.work/<name>/``, configured
durably (as a production server would run), built on tests/pgserver.py.

tests/pgserver.py sets up a disposable server for tests: fsync, synchronous_commit and
full_page_writes off. The benchmarks measure the realistic configuration instead, so the
settings below go into ``postgresql.auto.conf``, which overrides ``postgresql.conf``. The
data folder is kept between runs (a seeded database is reused); only ``stop()`` is called
at exit, never the test helper's ``close()`` (which deletes the folder).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from pgserver import PostgresServer, find_bindir  # noqa: E402

# Durable, as a mirror's database server runs; shared_buffers sized for a small dedicated host.
DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
}
SETTINGS_NOTE = (
    "PostgreSQL {version}: fsync on, synchronous_commit on, full_page_writes on, "
    "shared_buffers 256MB, other settings default (work_mem 4MB, max_wal_size 1GB, "
    "autovacuum on); on the same disk and 2 cores as everything else"
)


class BenchPostgres:
    def __init__(self, name: str, work: Path) -> None:
        self.base = work / name
        self.server: PostgresServer | None = None
        self.version = ""

    def start(self, log=print) -> None:  # type: ignore[no-untyped-def]
        if find_bindir() is None:
            raise SystemExit(
                "PostgreSQL server binaries not found: apt-get install postgresql "
                "(Debian's, they land in /usr/lib/postgresql/<N>/bin)"
            )
        self.base.parent.mkdir(parents=True, exist_ok=True)
        server = PostgresServer(self.base)
        atexit.unregister(server.close)  # keep the data folder: close() would delete it
        conf = server.data / "postgresql.conf"
        if (server.data / "PG_VERSION").exists() and conf.exists():
            ports = re.findall(r"^port = (\d+)", conf.read_text(), re.MULTILINE)
            server.port = int(ports[-1])
            if server.is_running:  # a run killed before it could stop it
                server.stop("fast")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
            log(f"initialising a PostgreSQL server in {self.base} ...")
            server.init()
        auto = server.data / "postgresql.auto.conf"
        text = "# benchmarks/bench_pg.py: durable settings\n" + "".join(
            f"{key} = {value}\n" for key, value in DURABLE.items()
        )
        if not auto.exists() or auto.read_text() != text:
            auto.write_text(text)
            if server.user is not None:
                import pwd

                pw = pwd.getpwnam(server.user)
                os.chown(auto, pw.pw_uid, pw.pw_gid)
        server.start()
        self.server = server
        atexit.register(self.stop)
        self.version = (server.data / "PG_VERSION").read_text().strip()
        # The durable settings really are in force.
        import psycopg

        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            for key, value in DURABLE.items():
                shown = conn.execute(f"SHOW {key}").fetchone()[0]
                assert shown == value, (key, shown, value)

    @property
    def note(self) -> str:
        return SETTINGS_NOTE.format(version=self.version)

    def url(self, dbname: str) -> str:
        assert self.server is not None
        return self.server.url(dbname)

    def admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def fresh_database(self, name: str, template: str | None = None) -> str:
        """Drop and create database ``name`` (a file copy of ``template``, if given)."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            self.admin(f'CREATE DATABASE "{name}"')
        else:
            # FILE_COPY: copies the files after a checkpoint (the default WAL_LOG strategy
            # would write the whole database through the WAL).
            self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def database_exists(self, name: str) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return row.fetchone() is not None

    def pids(self) -> list[int]:
        """The postmaster and all its children (backends, checkpointer, autovacuum...)."""
        assert self.server is not None
        try:
            master = int((self.server.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [master]
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            return pids
        return pids + [int(p) for p in children]

    def memory_bytes(self) -> int:
        """Proportional set size of all the server's processes added up: its shared buffers
        count once (summing RSS would count them once per backend that touched them)."""
        total = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
            if match:
                total += int(match.group(1)) * 1024
        return total

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.server is not None and self.server.is_running:
            self.server.stop("fast")
        self.server = None
