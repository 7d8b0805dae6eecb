"""One connection to either backend, behind the few operations the store needs.

Queries are written once, with ``?`` placeholders, in SQL both engines accept; the PostgreSQL
driver turns ``?`` into psycopg's ``%s``. What genuinely differs (locking, schema version,
bulk load, error kinds) is a method here.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from pypi_mirror.db.location import StoreLocation

BUSY_TIMEOUT_MS = 60_000
# A PostgreSQL server that does not answer a connect within this is reported unreachable
# (the serve paths must not hang on it).
CONNECT_TIMEOUT = 5
# Advisory lock keys: this namespace and a number (locks.py has the others), two 32-bit
# numbers unlikely to collide with another application's.
LOCK_NAMESPACE = 0x50595049  # "PYPI"
MIGRATION_LOCK = 1


class SchemaError(Exception):
    """The store's schema is newer than this program knows (a node of an older version)."""


# What a store operation may raise, whichever the backend.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, SchemaError)
SQLITE_FULL = 13  # "database or disk is full"
STREAM_BATCH = 10_000  # rows per fetch from a PostgreSQL server-side cursor


def is_busy(error: BaseException) -> bool:
    """Another writer holds the lock (SQLite's single writer): worth retrying at once."""
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
        return "locked" in str(error)
    return isinstance(error, psycopg.errors.LockNotAvailable | psycopg.errors.DeadlockDetected)


def is_unreachable(error: BaseException) -> bool:
    """The database server cannot be reached (down, restarting, network): worth waiting for.

    A connection that failed or broke carries no SQLSTATE, or one of class 08 (connection
    exception) or 57P (shutting down, starting up); anything else the server answered (a lock
    timeout, a deadlock, a full disk) is the statement's failure, not the connection's."""
    if not isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    state = error.sqlstate
    return state is None or state.startswith(("08", "57P"))


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == SQLITE_FULL
    return isinstance(error, psycopg.errors.DiskFull)


def application_name(role: str) -> str:
    """How this process shows in pg_stat_activity (and in "who holds the sync lock")."""
    return f"pypi-mirror {role} on {socket.gethostname()} pid {os.getpid()}"[:63]


def pg_connect(
    location: StoreLocation, role: str, timeout: float = CONNECT_TIMEOUT
) -> psycopg.Connection[Any]:
    """A new autocommit connection to the PostgreSQL store, named after ``role`` in
    pg_stat_activity, with the password from database.password_file if there is one."""
    extra: dict[str, Any] = {}
    try:
        password = location.password()
    except OSError as error:  # reported as the database failing, which it does for us
        raise psycopg.OperationalError(
            f"cannot read database.password_file {location.password_file}: "
            f"{error.strerror or error}"
        ) from None
    if password is not None:
        extra["password"] = password
    return psycopg.connect(
        location.url or "",
        autocommit=True,
        connect_timeout=max(1, int(timeout)),
        application_name=application_name(role),
        **extra,
    )


class SqliteDriver:
    backend = "sqlite"

    def __init__(self, location: StoreLocation, role: str) -> None:
        assert location.sqlite_path is not None
        self.location = location
        self.conn = sqlite3.connect(
            str(location.sqlite_path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._enable_wal()
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = OFF")

    def _enable_wal(self) -> None:
        """Switching a new file to WAL needs it to itself, and SQLite does not wait for
        that (processes opening a new store together get "database is locked"): retry."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if not is_busy(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        return self.conn.executemany(sql, rows).rowcount

    def copy_in(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        marks = ", ".join("?" * len(columns))
        self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: take the write lock up front so a busy wait happens here, once."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def set_lock_wait(self, seconds: float) -> None:
        self.conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version = {int(version)}")

    def lock_for_migration(self) -> None:
        """Inside the migration's transaction: BEGIN IMMEDIATE already serialises writers."""

    def lock_table(self, table: str, mode: str) -> None:
        """Inside a transaction: BEGIN IMMEDIATE already excludes every other writer."""

    def stream(
        self, sql: str, params: Sequence[Any] = (), settings: Sequence[str] = ()
    ) -> Iterator[Any]:
        """The rows as SQLite steps through them (``settings`` are PostgreSQL's)."""
        yield from self.conn.execute(sql, params)

    def pragma(self, name: str, value: int | None = None) -> int | None:
        if value is None:
            return int(self.conn.execute(f"PRAGMA {name}").fetchone()[0])
        self.conn.execute(f"PRAGMA {name} = {int(value)}")
        return None

    def checkpoint(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


class PostgresDriver:
    """psycopg 3 in autocommit mode: a statement outside ``transaction()`` commits by itself,
    as with SQLite's ``isolation_level=None``. A connection broken by a server restart is
    replaced at the next call, so a long-lived store recovers by itself."""

    backend = "postgresql"

    def __init__(self, location: StoreLocation, role: str) -> None:
        self.location = location
        self._role = role
        self._lock_wait: float | None = None
        self._translated: dict[str, str] = {}
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = pg_connect(self.location, self._role)
        if self._lock_wait is not None:
            conn.execute(f"SET lock_timeout = {int(self._lock_wait * 1000)}")
        return conn

    def _live(self) -> psycopg.Connection[Any]:
        if self.conn.closed or self.conn.broken:
            self.conn.close()
            self.conn = self._connect()
        return self.conn

    def close(self) -> None:
        self.conn.close()

    def _sql(self, sql: str) -> str:
        translated = self._translated.get(sql)
        if translated is None:
            translated = self._translated[sql] = sql.replace("?", "%s")
        return translated

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._live().execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        with self._live().cursor() as cursor:
            cursor.executemany(self._sql(sql), list(rows))
            return cursor.rowcount

    def copy_in(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """COPY: the bulk path, several times faster than INSERTs for a batch of votes."""
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with self._live().cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._live().transaction():
            yield

    def set_lock_wait(self, seconds: float) -> None:
        self._lock_wait = seconds
        self.execute(f"SET lock_timeout = {int(seconds * 1000)}")

    def schema_version(self) -> int:
        # From the catalog with this statement's snapshot: to_regclass answers from the
        # session's cache, which can still say "absent" after another node's migration
        # committed (it would then run the migrations a second time).
        exists = self.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
            "WHERE schemaname = current_schema() AND tablename = 'schema_version')"
        ).fetchone()[0]
        if not exists:
            return 0
        row = self.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else int(row[0])

    def set_schema_version(self, version: int) -> None:
        self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        self.execute("DELETE FROM schema_version")
        self.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def lock_for_migration(self) -> None:
        """Inside the migration's transaction: nodes starting together migrate one at a time
        (released at COMMIT)."""
        self.execute("SELECT pg_advisory_xact_lock(?, ?)", (LOCK_NAMESPACE, MIGRATION_LOCK))

    def lock_table(self, table: str, mode: str) -> None:
        """Inside a transaction: take ``table``'s lock in ``mode`` (until COMMIT)."""
        self.execute(f"LOCK TABLE {table} IN {mode} MODE")

    def stream(
        self, sql: str, params: Sequence[Any] = (), settings: Sequence[str] = ()
    ) -> Iterator[Any]:
        """The rows a batch at a time from a server-side cursor (a large result is neither
        held whole in memory nor waited for before the first row), inside a read transaction
        whose ``SET LOCAL`` ``settings`` apply to this query only."""
        conn = self._live()
        with conn.transaction(), conn.cursor(name="pypi_mirror_stream") as cursor:
            for setting in settings:
                conn.execute(f"SET LOCAL {setting}")
            cursor.itersize = STREAM_BATCH
            cursor.execute(self._sql(sql), params)
            yield from cursor


Driver = SqliteDriver | PostgresDriver


def connect(location: StoreLocation, role: str = "store") -> Driver:
    if location.is_postgresql:
        return PostgresDriver(location, role)
    return SqliteDriver(location, role)


def probe(location: StoreLocation, timeout: float) -> str | None:
    """Why the store cannot be read now, or None. A new connection each time: a long-lived
    one would keep reading an SQLite file deleted or replaced under it, or hide that a
    PostgreSQL server stopped accepting new connections."""
    try:
        if location.sqlite_path is not None:
            uri = f"{location.sqlite_path.absolute().as_uri()}?mode=ro"
            sqlite_conn = sqlite3.connect(uri, uri=True, timeout=timeout)
            try:
                sqlite_conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                sqlite_conn.execute("SELECT 1 FROM settings LIMIT 1").fetchall()
            finally:
                sqlite_conn.close()
            return None
        with pg_connect(location, "ready probe", timeout) as pg_conn:
            pg_conn.execute("SELECT 1 FROM settings LIMIT 1").fetchall()
        return None
    except (*STORE_ERRORS, OSError) as error:
        return f"database not readable ({location.display}): {str(error).strip()}"
