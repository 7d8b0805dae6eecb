"""The SQLite store ``{repo_path}/pypi-mirror.db``: schema, migrations and every query.

Nothing outside this module writes SQL. WAL mode lets the server's workers read and write
while `sync` runs; a long busy timeout makes concurrent writers wait instead of failing
with "database is locked".

File paths (the part after ``/packages/``) are interned in ``files`` so that millions of votes
cost a few integers each rather than a 100-byte path.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DB_FILENAME = "pypi-mirror.db"
BUSY_TIMEOUT_MS = 60_000

# Each entry migrates the schema from version i to i + 1. Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE files (
        id   INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE
    );
    CREATE TABLE votes (
        file_id INTEGER NOT NULL,
        prefix  TEXT    NOT NULL,
        time    INTEGER NOT NULL
    );
    CREATE INDEX votes_by_file ON votes (file_id, prefix, time);
    CREATE INDEX votes_by_time ON votes (time);
    CREATE TABLE serials (
        name       TEXT PRIMARY KEY,
        serial     INTEGER NOT NULL,
        fetched_at REAL    NOT NULL,
        on_demand  INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE local_sizes (
        file_id INTEGER PRIMARY KEY,
        size    INTEGER NOT NULL,
        tier    INTEGER NOT NULL
    );
    CREATE INDEX local_sizes_by_tier ON local_sizes (tier);
    CREATE TABLE remote_sizes (
        file_id    INTEGER PRIMARY KEY,
        size       INTEGER,
        checked_at REAL NOT NULL
    );
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 1 -> 2: what the server answered, per hour (each worker adds its counts), and the
    # runs of `sync`, for the status page and `pypi-mirror status`.
    """
    CREATE TABLE traffic_hourly (
        hour     INTEGER NOT NULL,
        route    TEXT    NOT NULL,
        outcome  TEXT    NOT NULL,
        status   INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        bytes    INTEGER NOT NULL,
        PRIMARY KEY (hour, route, outcome, status)
    ) WITHOUT ROWID;
    CREATE TABLE sync_runs (
        id       INTEGER PRIMARY KEY,
        started  REAL NOT NULL,
        finished REAL NOT NULL,
        result   TEXT NOT NULL,
        summary  TEXT NOT NULL
    );
    """,
]


class Vote(NamedTuple):
    """A plain tuple, so that the vote recorder can buffer ``(path, prefix, time)`` as is."""

    path: str
    prefix: str
    time: float


@dataclass(frozen=True)
class LocalFile:
    path: str
    size: int
    tier: int


class Database:
    """One connection to the store. Use one instance per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = OFF")
        self._migrate()

    @classmethod
    def open(cls, repo_path: Path) -> Database:
        repo_path.mkdir(parents=True, exist_ok=True)
        return cls(repo_path / DB_FILENAME)

    def close(self) -> None:
        self.conn.close()

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a statement waits for another connection's write lock before it fails
        with "database is locked" (the vote writer waits briefly and retries by itself)."""
        self.conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so a busy wait happens here, once."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- schema ----------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version >= len(MIGRATIONS):
            return
        with self.transaction() as conn:
            version = self.schema_version  # re-read under the lock: another process may have won
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    # -- settings --------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- files -----------------------------------------------------------------------------

    def _file_ids(self, paths: Iterable[str]) -> dict[str, int]:
        """Intern paths (inside the caller's transaction) and return their ids."""
        unique = list(dict.fromkeys(paths))
        self.conn.executemany(
            "INSERT OR IGNORE INTO files (path) VALUES (?)", ((p,) for p in unique)
        )
        ids: dict[str, int] = {}
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for file_id, path in self.conn.execute(
                f"SELECT id, path FROM files WHERE path IN ({marks})", chunk
            ):
                ids[path] = file_id
        return ids

    # -- votes -----------------------------------------------------------------------------

    def add_votes(self, votes: Iterable[tuple[str, str, float]], dedup_window: float) -> int:
        """Store ``(path, prefix, time)`` votes (``Vote`` or plain tuples), skipping a
        (file, prefix) pair already recorded within the window.

        Returns how many were stored. One transaction for the whole batch.
        """
        votes = list(votes)
        if not votes:
            return 0
        stored = 0
        with self.transaction() as conn:
            ids = self._file_ids(vote[0] for vote in votes)
            for path, prefix, when in votes:
                file_id = ids[path]
                moment = int(when)
                recent = conn.execute(
                    "SELECT 1 FROM votes WHERE file_id = ? AND prefix = ? AND time > ? LIMIT 1",
                    (file_id, prefix, moment - dedup_window),
                ).fetchone()
                if recent is None:
                    conn.execute(
                        "INSERT INTO votes (file_id, prefix, time) VALUES (?, ?, ?)",
                        (file_id, prefix, moment),
                    )
                    stored += 1
        return stored

    def votes_for(self, path: str) -> list[tuple[str, int]]:
        """(prefix, time) of every stored vote for one file, oldest first."""
        return self.conn.execute(
            "SELECT v.prefix, v.time FROM votes v JOIN files f ON f.id = v.file_id "
            "WHERE f.path = ? ORDER BY v.time",
            (path,),
        ).fetchall()

    def vote_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    # -- serials ---------------------------------------------------------------------------

    def get_serial(self, name: str) -> tuple[int, float, bool] | None:
        """(serial, fetched_at, on_demand) of a project, or None if unknown."""
        row = self.conn.execute(
            "SELECT serial, fetched_at, on_demand FROM serials WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else (int(row[0]), float(row[1]), bool(row[2]))

    def set_serial(
        self, name: str, serial: int, *, on_demand: bool = False, now: float | None = None
    ) -> None:
        self.conn.execute(
            "INSERT INTO serials (name, serial, fetched_at, on_demand) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET serial = excluded.serial, "
            "fetched_at = excluded.fetched_at, on_demand = excluded.on_demand",
            (name, serial, time.time() if now is None else now, int(on_demand)),
        )

    def delete_serial(self, name: str) -> None:
        self.conn.execute("DELETE FROM serials WHERE name = ?", (name,))

    def max_serial(self) -> int:
        """The highest project serial held (0 when none)."""
        return int(self.conn.execute("SELECT COALESCE(MAX(serial), 0) FROM serials").fetchone()[0])

    def serials_signature(self) -> str:
        """Changes whenever a project is added, removed or its serial moves (serials only
        grow): tells whether the root index still lists what the table holds."""
        count, top, total = self.conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(serial), 0), COALESCE(SUM(serial), 0) FROM serials"
        ).fetchone()
        return f"{count}:{top}:{total}"

    def iter_serials_sorted(self) -> Iterator[tuple[str, int]]:
        """Every known project with its serial, by name (for the root index)."""
        yield from self.conn.execute("SELECT name, serial FROM serials ORDER BY name")

    # -- local_sizes -----------------------------------------------------------------------

    def set_local_files(self, files: Iterable[LocalFile]) -> None:
        files = list(files)
        with self.transaction() as conn:
            ids = self._file_ids(f.path for f in files)
            conn.executemany(
                "INSERT INTO local_sizes (file_id, size, tier) VALUES (?, ?, ?) "
                "ON CONFLICT (file_id) DO UPDATE SET size = excluded.size, tier = excluded.tier",
                ((ids[f.path], f.size, f.tier) for f in files),
            )

    def delete_local_files(self, paths: Iterable[str]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "DELETE FROM local_sizes WHERE file_id = (SELECT id FROM files WHERE path = ?)",
                ((p,) for p in paths),
            )

    def all_local_files(self) -> list[LocalFile]:
        return [
            LocalFile(path, int(size), int(tier))
            for path, size, tier in self.conn.execute(
                "SELECT f.path, l.size, l.tier FROM local_sizes l JOIN files f ON f.id = l.file_id"
            )
        ]

    # -- remote_sizes ----------------------------------------------------------------------

    def set_remote_sizes(
        self, sizes: Iterable[tuple[str, int | None]], now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        sizes = list(sizes)
        with self.transaction() as conn:
            ids = self._file_ids(p for p, _ in sizes)
            conn.executemany(
                "INSERT INTO remote_sizes (file_id, size, checked_at) VALUES (?, ?, ?) "
                "ON CONFLICT (file_id) DO UPDATE SET size = excluded.size, "
                "checked_at = excluded.checked_at",
                ((ids[p], size, now) for p, size in sizes),
            )

    # -- traffic and sync runs (status page, /metrics, `pypi-mirror status`) ---------------

    SYNC_RUNS_KEPT = 500

    def add_traffic(self, rows: Iterable[tuple[int, str, str, int, int, int]]) -> None:
        """Add (hour, route, outcome, status, requests, bytes) counts to the hourly rows."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO traffic_hourly (hour, route, outcome, status, requests, bytes) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hour, route, outcome, status) DO UPDATE "
                "SET requests = requests + excluded.requests, bytes = bytes + excluded.bytes",
                rows,
            )

    def traffic_since(self, hour: int) -> list[tuple[int, str, str, int, int, int]]:
        """(hour, route, outcome, status, requests, bytes) of every hour from ``hour`` on."""
        return self.conn.execute(
            "SELECT hour, route, outcome, status, requests, bytes FROM traffic_hourly "
            "WHERE hour >= ? ORDER BY hour",
            (hour,),
        ).fetchall()

    def delete_traffic_before(self, hour: int) -> int:
        return self.conn.execute("DELETE FROM traffic_hourly WHERE hour < ?", (hour,)).rowcount

    def add_sync_run(self, started: float, finished: float, result: str, summary: str) -> None:
        """Record one `sync` run (``summary``: a JSON object of its counts); keeps the last
        SYNC_RUNS_KEPT."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sync_runs (started, finished, result, summary) VALUES (?, ?, ?, ?)",
                (started, finished, result, summary),
            )
            conn.execute(
                "DELETE FROM sync_runs WHERE id <= (SELECT MAX(id) FROM sync_runs) - ?",
                (self.SYNC_RUNS_KEPT,),
            )

    def sync_runs(self, limit: int) -> list[tuple[float, float, str, str]]:
        """(started, finished, result, summary) of the last ``limit`` runs, newest first."""
        return self.conn.execute(
            "SELECT started, finished, result, summary FROM sync_runs ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()

    def last_sync_run(self, result: str) -> tuple[float, float, str, str] | None:
        """The newest run that ended with ``result`` (e.g. "ok")."""
        return self.conn.execute(
            "SELECT started, finished, result, summary FROM sync_runs WHERE result = ? "
            "ORDER BY id DESC LIMIT 1",
            (result,),
        ).fetchone()

    def local_usage(self) -> list[tuple[int, int, int]]:
        """(tier, files, bytes) of the files recorded in local_sizes, per tier."""
        return self.conn.execute(
            "SELECT tier, COUNT(*), COALESCE(SUM(size), 0) FROM local_sizes GROUP BY tier"
        ).fetchall()

    def most_voted_files(self, since: float, limit: int) -> list[tuple[str, int]]:
        """(path, votes) of the ``limit`` files with the most votes since ``since``."""
        return self.conn.execute(
            "SELECT f.path, v.votes FROM ("
            "  SELECT file_id, COUNT(*) AS votes FROM votes WHERE time >= ? "
            "  GROUP BY file_id ORDER BY votes DESC LIMIT ?"
            ") v JOIN files f ON f.id = v.file_id ORDER BY v.votes DESC",
            (since, limit),
        ).fetchall()

    # -- cache management ------------------------------------------------------------------
    # Phase E deletes in slices, each its own transaction followed by a short pause, so that
    # the server's vote writers (which retry every few ms) get the write lock in between.
    # A slice's row count adapts so that it holds the lock about CLEANUP_HOLD: an old vote's
    # entry in votes_by_file sits anywhere in that index, so each deleted vote writes about
    # one page, and how many a second that makes depends on the index's size and the disk.

    CLEANUP_HOLD = 0.1  # seconds of write lock per slice, the target
    # Seconds between slices, lock free. The vote writer looks every few ms; a connection on
    # SQLite's own busy wait looks every 100 ms, so it gets in at about one look in five.
    CLEANUP_PAUSE = 0.025
    CLEANUP_FIRST_SLICE = 1_000
    CLEANUP_MAX_SLICE = 100_000
    # A checkpoint (without the lock) after this many deleted rows, not after every slice:
    # a page changed by several slices is then copied back once; the WAL stays ~100 MB.
    CLEANUP_CHECKPOINT_ROWS = 25_000
    CLEANUP_SCAN = 50_000  # files / remote sizes read (without the lock) per pass
    # Page cache while cleaning up: deleting old votes touches pages of votes_by_file all
    # over the index; with SQLite's default 2 MB a slice would read them many times.
    CLEANUP_CACHE_KIB = 256 * 1024

    def local_files_map(self) -> dict[str, tuple[int, int]]:
        """Every row of local_sizes: path -> (size, tier)."""
        return {
            path: (size, tier)
            for path, size, tier in self.conn.execute(
                "SELECT f.path, l.size, l.tier FROM local_sizes l JOIN files f ON f.id = l.file_id"
            )
        }

    def vote_totals(self, since: float) -> Iterator[tuple[str, int, int, int | None, float | None]]:
        """Every file voted for since ``since``: (path, votes, distinct prefixes, remote size,
        remote size checked_at). One pass over the covering index ``votes_by_file``."""
        return self.conn.execute(
            "SELECT f.path, v.votes, v.prefixes, r.size, r.checked_at FROM ("
            "  SELECT file_id, COUNT(*) AS votes, COUNT(DISTINCT prefix) AS prefixes"
            "  FROM votes WHERE time >= ? GROUP BY file_id"
            ") v JOIN files f ON f.id = v.file_id "
            "LEFT JOIN remote_sizes r ON r.file_id = v.file_id",
            (since,),
        )

    def count_votes_before(self, cutoff: float) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM votes WHERE time < ?", (cutoff,))
        return int(row.fetchone()[0])

    def delete_votes_before(self, cutoff: float) -> int:
        def delete_slice(conn: sqlite3.Connection, limit: int) -> int:
            return conn.execute(
                "DELETE FROM votes WHERE rowid IN (SELECT rowid FROM votes WHERE time < ? LIMIT ?)",
                (cutoff, limit),
            ).rowcount

        deleted = 0
        with self._cleanup_mode() as slicer:
            while True:
                count, limit = slicer.run(delete_slice)
                deleted += count
                if count < limit:
                    return deleted

    def count_remote_sizes_before(self, cutoff: float) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM remote_sizes WHERE checked_at < ?", (cutoff,))
        return int(row.fetchone()[0])

    def delete_remote_sizes_before(self, cutoff: float) -> int:
        # Found without the lock; deleted under it only if still old (re-checked).
        return self._scan_and_delete(
            "SELECT file_id FROM remote_sizes WHERE file_id > ? AND checked_at < ? "
            "ORDER BY file_id LIMIT ?",
            "DELETE FROM remote_sizes WHERE file_id = ? AND checked_at < ?",
            (cutoff,),
        )

    def delete_unreferenced_files(self) -> int:
        """Drop interned paths that no vote, local size or remote size refers to any more.

        Found without the lock; deleted under it only if still unreferenced (a vote writer
        may have used the path in between)."""
        unreferenced = (
            "NOT EXISTS (SELECT 1 FROM votes WHERE file_id = files.id) "
            "AND NOT EXISTS (SELECT 1 FROM local_sizes WHERE file_id = files.id) "
            "AND NOT EXISTS (SELECT 1 FROM remote_sizes WHERE file_id = files.id)"
        )
        return self._scan_and_delete(
            f"SELECT id FROM files WHERE id > ? AND {unreferenced} ORDER BY id LIMIT ?",
            f"DELETE FROM files WHERE id = ? AND {unreferenced}",
            (),
        )

    def _scan_and_delete(self, scan: str, delete: str, extra: tuple[float, ...]) -> int:
        """``scan`` (params: last id, *extra, limit) lists ids in order, read outside any write
        transaction; ``delete`` (params: id, *extra) removes one if it still qualifies."""
        deleted = 0
        last = 0
        with self._cleanup_mode() as slicer:
            while True:
                ids = [row[0] for row in self.conn.execute(scan, (last, *extra, self.CLEANUP_SCAN))]
                deleted += self._delete_ids(slicer, delete, ids, extra)
                if len(ids) < self.CLEANUP_SCAN:
                    return deleted
                last = ids[-1]

    @staticmethod
    def _delete_ids(slicer: _Slicer, delete: str, ids: list[int], extra: tuple[float, ...]) -> int:
        deleted = 0
        position = 0

        def delete_slice(conn: sqlite3.Connection, limit: int) -> int:
            chunk = ids[position : position + limit]
            return conn.executemany(delete, ((i, *extra) for i in chunk)).rowcount

        while position < len(ids):
            count, limit = slicer.run(delete_slice)
            deleted += count
            position += limit
        return deleted

    @contextmanager
    def _cleanup_mode(self) -> Iterator[_Slicer]:
        """A large page cache, and checkpoints by the slicer, outside the lock (an automatic
        one would run inside COMMIT and be counted as the slice's time)."""
        cache = self.conn.execute("PRAGMA cache_size").fetchone()[0]
        autocheckpoint = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.conn.execute(f"PRAGMA cache_size = -{self.CLEANUP_CACHE_KIB}")
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            yield _Slicer(self)
        finally:
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
            self.conn.execute(f"PRAGMA cache_size = {int(cache)}")


class _Slicer:
    """Runs one slice of a cleanup per call: a transaction, a checkpoint now and then, a
    pause; and sizes the next slice so that it holds the write lock about ``CLEANUP_HOLD``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.limit = db.CLEANUP_FIRST_SLICE
        self._since_checkpoint = 0

    def run(self, work: Callable[[sqlite3.Connection, int], int]) -> tuple[int, int]:
        """``work(conn, limit)`` deletes at most ``limit`` rows and returns how many it did.
        Returns (that count, the limit it was given)."""
        db = self._db
        limit = self.limit
        with db.transaction() as conn:
            started = time.monotonic()  # after BEGIN: waiting for the lock is not holding it
            count = work(conn, limit)
        held = time.monotonic() - started
        self._since_checkpoint += count
        if self._since_checkpoint >= db.CLEANUP_CHECKPOINT_ROWS:
            db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._since_checkpoint = 0
        if count >= limit:  # a full slice: a fair measure of the rate
            scaled = limit * db.CLEANUP_HOLD / max(held, 0.001)
            # At most double or halve per step: one slow or fast slice is not a trend.
            scaled = min(max(scaled, limit / 2), limit * 2)
            self.limit = int(min(max(scaled, 100), db.CLEANUP_MAX_SLICE))
        time.sleep(db.CLEANUP_PAUSE)
        return count, limit
