"""The store: every query, on the embedded SQLite file or on a shared PostgreSQL.

Nothing outside this package writes SQL. Each query is written once and runs on both engines
(connection.py adapts placeholders, transactions and bulk loads). On SQLite, WAL mode lets the
server's workers read and write while `sync` runs and a long busy timeout makes concurrent
writers wait instead of failing; on PostgreSQL any number of serve nodes write at once.

File paths (the part after ``/packages/``) are interned in ``files`` so that millions of votes
cost a few integers each rather than a 100-byte path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pypi_mirror.db.connection import Driver, SchemaError, SqliteDriver, connect
from pypi_mirror.db.location import DB_FILENAME, StoreLocation
from pypi_mirror.db.schema import MIGRATIONS, statements

__all__ = ["DB_FILENAME", "Database", "LocalFile", "Vote"]

# Rows per multi-row statement: 3 parameters each stays far below either engine's limit.
ROWS_PER_STATEMENT = 1000


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

    def __init__(self, where: StoreLocation | Path, role: str = "store") -> None:
        # A bare path is an SQLite file (tests, tools); configured code passes config.store.
        self.location = where if isinstance(where, StoreLocation) else StoreLocation.sqlite(where)
        self._db: Driver = connect(self.location, role)
        self.backend = self._db.backend
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, location: StoreLocation, role: str = "store") -> Database:
        """Open (creating an SQLite file's folder if need be) and migrate."""
        if location.sqlite_path is not None:
            location.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return cls(location, role)

    @classmethod
    def in_repo(cls, repo_path: Path) -> Database:
        """The embedded SQLite file of a repository (tools and tests; configured code opens
        ``config.store``, which may be PostgreSQL)."""
        return cls.open(StoreLocation.sqlite(repo_path / DB_FILENAME))

    def close(self) -> None:
        self._db.close()

    def set_busy_timeout(self, seconds: float) -> None:
        """How long a statement waits for another connection's lock before it fails (the
        vote writer waits briefly and retries by itself)."""
        self._db.set_lock_wait(seconds)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self._db.transaction():
            yield

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, params)

    # -- schema ----------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self._db.schema_version()

    @classmethod
    def schema_version_of(cls, location: StoreLocation) -> int:
        """The schema version a store holds now (0: empty or absent), changing nothing."""
        if location.sqlite_path is not None and not location.sqlite_path.exists():
            return 0
        driver = connect(location, "schema check")
        try:
            return driver.schema_version()
        finally:
            driver.close()

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise SchemaError(
                f"{self.location.display} holds schema version {version}, newer than this "
                f"pypi-mirror's {len(MIGRATIONS)}: upgrade pypi-mirror on this node"
            )
        if version == len(MIGRATIONS):
            return
        with self._db.transaction():
            self._db.lock_for_migration()
            version = self.schema_version  # re-read under the lock: another process may have won
            for migration in MIGRATIONS[version:]:
                script = getattr(migration, self.backend)
                for statement in statements(script):
                    self._x(statement)
            self._db.set_schema_version(len(MIGRATIONS))

    # -- settings --------------------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self._x("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        self._x(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _insert_rows(
        self, sql: str, rows: Sequence[tuple[Any, ...]], extra: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        """``sql`` with ``{rows}`` for a multi-row VALUES list (and ``extra`` parameters after
        it), run a chunk of rows at a time: one statement per row costs PostgreSQL a round of
        parsing and planning each. Rows with the same key must not share a chunk: callers
        pass unique keys. Returns what a RETURNING clause returned."""
        returned: list[tuple[Any, ...]] = []
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start : start + ROWS_PER_STATEMENT]
            marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
            cursor = self._x(
                sql.format(rows=", ".join([marks] * len(chunk))),
                [*(value for row in chunk for value in row), *extra],
            )
            if cursor.description is not None:
                returned.extend(cursor.fetchall())
        return returned

    # -- files -----------------------------------------------------------------------------

    def _lookup_ids(self, paths: list[str], ids: dict[str, int]) -> None:
        for start in range(0, len(paths), ROWS_PER_STATEMENT):
            chunk = paths[start : start + ROWS_PER_STATEMENT]
            marks = ",".join("?" * len(chunk))
            for file_id, path in self._x(
                f"SELECT id, path FROM files WHERE path IN ({marks})", chunk
            ):
                ids[path] = int(file_id)

    def _file_ids(self, paths: Iterable[str]) -> dict[str, int]:
        """Intern paths (inside the caller's transaction) and return their ids. Only the new
        ones are inserted, in sorted order: two nodes interning the same new paths at once
        then wait for each other in the same order, never in a cycle."""
        unique = sorted(set(paths))
        ids: dict[str, int] = {}
        self._lookup_ids(unique, ids)
        missing = [path for path in unique if path not in ids]
        if missing:
            self._insert_rows(
                "INSERT INTO files (path) VALUES {rows} ON CONFLICT (path) DO NOTHING",
                [(path,) for path in missing],
            )
            self._lookup_ids(missing, ids)
        return ids

    # -- votes -----------------------------------------------------------------------------

    def add_votes(
        self,
        votes: Iterable[tuple[str, str, float]],
        dedup_window: float,
        batch: tuple[str, int] | None = None,
    ) -> int:
        """Store ``(path, prefix, time)`` votes (``Vote`` or plain tuples), skipping a
        (file, prefix) pair already recorded within the window, whoever recorded it.

        Returns how many were stored. One transaction for the whole batch: the window is
        applied by a conditional upsert of ``vote_last`` (atomic, so votes sent at once by
        several nodes for one pair count once), and the accepted votes are bulk-loaded.
        ``batch`` (writer id, batch number, numbers growing) makes a retry of a batch whose
        outcome was lost harmless: one already stored is not stored again.
        """
        votes = list(votes)
        if not votes:
            return 0
        with self.transaction():
            # Before the paths are looked up: the cleanup of unreferenced paths (SHARE on
            # vote_last) then either ran before, or waits until this batch is in.
            self._db.lock_table("vote_last", "ROW EXCLUSIVE")
            if batch is not None:
                done = self._x(
                    "SELECT batch, votes FROM vote_writers WHERE writer = ?", (batch[0],)
                ).fetchone()
                if done is not None and int(done[0]) >= batch[1]:
                    return int(done[1]) if int(done[0]) == batch[1] else 0
            if dedup_window <= 0:  # no window: every vote counts, in whatever order it came
                ids = self._file_ids(path for path, _, _ in votes)
                accepted = [(ids[path], prefix, int(when)) for path, prefix, when in votes]
            else:
                rounds = _dedup_in_batch(votes, dedup_window)
                ids = self._file_ids(path for group in rounds for path, _, _ in group)
                accepted = []
                for group in rounds:
                    # Sorted by key: concurrent writers lock vote_last rows in one order.
                    rows = sorted((ids[path], prefix, moment) for path, prefix, moment in group)
                    accepted += self._insert_rows(
                        "INSERT INTO vote_last (file_id, prefix, time) VALUES {rows} "
                        "ON CONFLICT (file_id, prefix) DO UPDATE SET time = excluded.time "
                        "WHERE vote_last.time <= excluded.time - ? "
                        "RETURNING file_id, prefix, time",
                        rows,
                        (dedup_window,),
                    )
            if accepted:
                self._db.copy_in("votes", ("file_id", "prefix", "time"), accepted)
            if batch is not None:
                self._x(
                    "INSERT INTO vote_writers (writer, batch, votes, seen) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (writer) DO UPDATE SET batch = excluded.batch, "
                    "votes = excluded.votes, seen = excluded.seen",
                    (batch[0], batch[1], len(accepted), time.time()),
                )
        return len(accepted)

    def votes_for(self, path: str) -> list[tuple[str, int]]:
        """(prefix, time) of every stored vote for one file, oldest first."""
        return self._x(
            "SELECT v.prefix, v.time FROM votes v JOIN files f ON f.id = v.file_id "
            "WHERE f.path = ? ORDER BY v.time",
            (path,),
        ).fetchall()

    def vote_count(self) -> int:
        return int(self._x("SELECT COUNT(*) FROM votes").fetchone()[0])

    # -- serials ---------------------------------------------------------------------------

    def get_serial(self, name: str) -> tuple[int, float, bool] | None:
        """(serial, fetched_at, on_demand) of a project, or None if unknown."""
        row = self._x(
            "SELECT serial, fetched_at, on_demand FROM serials WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else (int(row[0]), float(row[1]), bool(row[2]))

    def set_serial(
        self, name: str, serial: int, *, on_demand: bool = False, now: float | None = None
    ) -> None:
        self._x(
            "INSERT INTO serials (name, serial, fetched_at, on_demand) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET serial = excluded.serial, "
            "fetched_at = excluded.fetched_at, on_demand = excluded.on_demand",
            (name, serial, time.time() if now is None else now, int(on_demand)),
        )

    def delete_serial(self, name: str) -> None:
        self._x("DELETE FROM serials WHERE name = ?", (name,))

    def max_serial(self) -> int:
        """The highest project serial held (0 when none)."""
        return int(self._x("SELECT COALESCE(MAX(serial), 0) FROM serials").fetchone()[0])

    def serials_signature(self) -> str:
        """Changes whenever a project is added, removed or its serial moves (serials only
        grow): tells whether the root index still lists what the table holds."""
        count, top, total = self._x(
            "SELECT COUNT(*), COALESCE(MAX(serial), 0), COALESCE(SUM(serial), 0) FROM serials"
        ).fetchone()
        return f"{int(count)}:{int(top)}:{int(total)}"

    def iter_serials_sorted(self) -> Iterator[tuple[str, int]]:
        """Every known project with its serial, by name (for the root index), streamed."""
        return self._db.stream("SELECT name, serial FROM serials ORDER BY name")

    # -- local_sizes -----------------------------------------------------------------------

    def set_local_files(self, files: Iterable[LocalFile]) -> None:
        files = list({f.path: f for f in files}.values())  # one row per path: the last
        with self.transaction():
            ids = self._file_ids(f.path for f in files)
            self._insert_rows(
                "INSERT INTO local_sizes (file_id, size, tier) VALUES {rows} "
                "ON CONFLICT (file_id) DO UPDATE SET size = excluded.size, tier = excluded.tier",
                [(ids[f.path], f.size, f.tier) for f in files],
            )

    def delete_local_files(self, paths: Iterable[str]) -> None:
        with self.transaction():
            self._db.executemany(
                "DELETE FROM local_sizes WHERE file_id = (SELECT id FROM files WHERE path = ?)",
                [(p,) for p in paths],
            )

    def all_local_files(self) -> list[LocalFile]:
        return [
            LocalFile(path, int(size), int(tier))
            for path, size, tier in self._x(
                "SELECT f.path, l.size, l.tier FROM local_sizes l JOIN files f ON f.id = l.file_id"
            )
        ]

    def known_sizes(self, paths: Iterable[str]) -> dict[str, int]:
        """Sizes of these paths the store knows: local ones, else the upstream's."""
        wanted = sorted(set(paths))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), ROWS_PER_STATEMENT):
            chunk = wanted[start : start + ROWS_PER_STATEMENT]
            for path, size in self._x(
                "SELECT f.path, COALESCE(l.size, r.size) FROM files f "
                "LEFT JOIN local_sizes l ON l.file_id = f.id "
                "LEFT JOIN remote_sizes r ON r.file_id = f.id "
                f"WHERE f.path IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                if size is not None:
                    found[path] = int(size)
        return found

    # -- remote_sizes ----------------------------------------------------------------------

    def set_remote_sizes(
        self, sizes: Iterable[tuple[str, int | None]], now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        sizes = list(dict(sizes).items())  # one row per path: the last
        with self.transaction():
            ids = self._file_ids(p for p, _ in sizes)
            self._insert_rows(
                "INSERT INTO remote_sizes (file_id, size, checked_at) VALUES {rows} "
                "ON CONFLICT (file_id) DO UPDATE SET size = excluded.size, "
                "checked_at = excluded.checked_at",
                [(ids[p], size, now) for p, size in sizes],
            )

    # -- traffic and sync runs (status page, /metrics, `pypi-mirror status`) ---------------

    SYNC_RUNS_KEPT = 500

    def add_traffic(self, rows: Iterable[tuple[int, str, str, int, int, int]]) -> None:
        """Add (hour, route, outcome, status, requests, bytes) counts to the hourly rows."""
        with self.transaction():
            self._db.executemany(
                "INSERT INTO traffic_hourly (hour, route, outcome, status, requests, bytes) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (hour, route, outcome, status) DO UPDATE "
                "SET requests = traffic_hourly.requests + excluded.requests, "
                "bytes = traffic_hourly.bytes + excluded.bytes",
                rows,
            )

    def traffic_since(self, hour: int) -> list[tuple[int, str, str, int, int, int]]:
        """(hour, route, outcome, status, requests, bytes) of every hour from ``hour`` on."""
        return self._x(
            "SELECT hour, route, outcome, status, requests, bytes FROM traffic_hourly "
            "WHERE hour >= ? ORDER BY hour",
            (hour,),
        ).fetchall()

    def delete_traffic_before(self, hour: int) -> int:
        return self._x("DELETE FROM traffic_hourly WHERE hour < ?", (hour,)).rowcount

    def add_sync_run(self, started: float, finished: float, result: str, summary: str) -> None:
        """Record one `sync` run (``summary``: a JSON object of its counts); keeps the last
        SYNC_RUNS_KEPT."""
        with self.transaction():
            self._x(
                "INSERT INTO sync_runs (started, finished, result, summary) VALUES (?, ?, ?, ?)",
                (started, finished, result, summary),
            )
            self._x(
                "DELETE FROM sync_runs WHERE id <= (SELECT MAX(id) FROM sync_runs) - ?",
                (self.SYNC_RUNS_KEPT,),
            )

    def sync_runs(self, limit: int) -> list[tuple[float, float, str, str]]:
        """(started, finished, result, summary) of the last ``limit`` runs, newest first."""
        return self._x(
            "SELECT started, finished, result, summary FROM sync_runs ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()

    def last_sync_run(self, result: str) -> tuple[float, float, str, str] | None:
        """The newest run that ended with ``result`` (e.g. "ok")."""
        return self._x(
            "SELECT started, finished, result, summary FROM sync_runs WHERE result = ? "
            "ORDER BY id DESC LIMIT 1",
            (result,),
        ).fetchone()

    def local_usage(self) -> list[tuple[int, int, int]]:
        """(tier, files, bytes) of the files recorded in local_sizes, per tier."""
        rows = self._x(
            "SELECT tier, COUNT(*), COALESCE(SUM(size), 0) FROM local_sizes GROUP BY tier"
        )
        return [(int(tier), int(files), int(size)) for tier, files, size in rows]  # PG: numeric

    def most_voted_files(self, since: float, limit: int) -> list[tuple[str, int]]:
        """(path, votes) of the ``limit`` files with the most votes since ``since``."""
        return self._x(
            "SELECT f.path, v.votes FROM ("
            "  SELECT file_id, COUNT(*) AS votes FROM votes WHERE time >= ? "
            "  GROUP BY file_id ORDER BY votes DESC LIMIT ?"
            ") v JOIN files f ON f.id = v.file_id ORDER BY v.votes DESC",
            (_whole(since), limit),
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
            for path, size, tier in self._x(
                "SELECT f.path, l.size, l.tier FROM local_sizes l JOIN files f ON f.id = l.file_id"
            )
        }

    def vote_totals(self, since: float) -> Iterator[tuple[str, int, int, int | None, float | None]]:
        """Every file voted for since ``since``: (path, votes, distinct prefixes, remote size,
        remote size checked_at). One pass over the covering index ``votes_by_file``."""
        sql = (
            "SELECT f.path, v.votes, v.prefixes, r.size, r.checked_at FROM ("
            "  SELECT file_id, COUNT(*) AS votes, COUNT(DISTINCT prefix) AS prefixes"
            "  FROM votes WHERE time >= ? GROUP BY file_id"
            ") v JOIN files f ON f.id = v.file_id "
            "LEFT JOIN remote_sizes r ON r.file_id = v.file_id"
        )
        # PostgreSQL, measured at 10 M votes: a parallel plan aggregates the whole index once
        # per process and JIT compiles for a second; one process walking the index in file
        # order and merge-joining is 2-3x faster.
        return self._db.stream(
            sql, (_whole(since),), ("jit = off", "max_parallel_workers_per_gather = 0")
        )

    def count_votes_before(self, cutoff: float) -> int:
        row = self._x("SELECT COUNT(*) FROM votes WHERE time < ?", (_whole(cutoff),))
        return int(row.fetchone()[0])

    def delete_votes_before(self, cutoff: float) -> int:
        return self._delete_sliced("votes", "time < ?", (_whole(cutoff),))

    def delete_vote_marks_before(self, cutoff: float) -> int:
        """Forget the newest-vote mark of pairs not voted for since ``cutoff`` (which must be
        older than the dedup window: a mark inside it still suppresses duplicates)."""
        return self._delete_sliced("vote_last", "time < ?", (_whole(cutoff),))

    def delete_vote_writers_before(self, cutoff: float) -> int:
        """Forget the last batch of writers not heard from since ``cutoff`` (a writer retries
        a batch within moments; a row per server process ever started would pile up)."""
        return int(self._x("DELETE FROM vote_writers WHERE seen < ?", (cutoff,)).rowcount)

    def _delete_sliced(self, table: str, where: str, params: tuple[int | float, ...]) -> int:
        """Delete ``table``'s rows matching ``where`` a slice at a time (see _Slicer)."""
        if self.backend == "postgresql":
            # By physical row address: each slice is an index range scan plus TID lookups.
            sql = (
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {table} WHERE {where} LIMIT ?))"
            )
        else:
            key, columns = ("(file_id, prefix)", "file_id, prefix")  # WITHOUT ROWID
            if table != "vote_last":
                key = columns = "rowid"
            sql = (
                f"DELETE FROM {table} WHERE {key} IN "
                f"(SELECT {columns} FROM {table} WHERE {where} LIMIT ?)"
            )

        def delete_slice(limit: int) -> int:
            return int(self._x(sql, (*params, limit)).rowcount)

        deleted = 0
        with self._cleanup_mode() as slicer:
            while True:
                count, limit = slicer.run(delete_slice)
                deleted += count
                if count < limit:
                    return deleted

    def count_remote_sizes_before(self, cutoff: float) -> int:
        row = self._x("SELECT COUNT(*) FROM remote_sizes WHERE checked_at < ?", (cutoff,))
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
        """Drop interned paths that no vote, vote mark, local size or remote size refers to.

        Found without the lock; deleted under it only if still unreferenced (a vote writer
        may have used the path in between). On PostgreSQL, where writers do not queue for one
        lock, each slice first waits for the vote transactions in flight (a SHARE lock on
        vote_last, which every vote transaction writes): the re-check then sees their votes."""
        unreferenced = (
            "NOT EXISTS (SELECT 1 FROM votes WHERE file_id = files.id) "
            "AND NOT EXISTS (SELECT 1 FROM vote_last WHERE file_id = files.id) "
            "AND NOT EXISTS (SELECT 1 FROM local_sizes WHERE file_id = files.id) "
            "AND NOT EXISTS (SELECT 1 FROM remote_sizes WHERE file_id = files.id)"
        )
        return self._scan_and_delete(
            f"SELECT id FROM files WHERE id > ? AND {unreferenced} ORDER BY id LIMIT ?",
            f"DELETE FROM files WHERE id = ? AND {unreferenced}",
            (),
            quiesce="vote_last",
        )

    def _scan_and_delete(
        self, scan: str, delete: str, extra: tuple[float, ...], quiesce: str | None = None
    ) -> int:
        """``scan`` (params: last id, *extra, limit) lists ids in order, read outside any write
        transaction; ``delete`` (params: id, *extra) removes one if it still qualifies."""
        deleted = 0
        last = 0
        with self._cleanup_mode() as slicer:
            while True:
                ids = [row[0] for row in self._x(scan, (last, *extra, self.CLEANUP_SCAN))]
                deleted += self._delete_ids(slicer, delete, ids, extra, quiesce)
                if len(ids) < self.CLEANUP_SCAN:
                    return deleted
                last = ids[-1]

    def _delete_ids(
        self,
        slicer: _Slicer,
        delete: str,
        ids: list[int],
        extra: tuple[float, ...],
        quiesce: str | None,
    ) -> int:
        deleted = 0
        position = 0

        def delete_slice(limit: int) -> int:
            if quiesce is not None:  # wait for its writers in flight, keep new ones out
                self._db.lock_table(quiesce, "SHARE")
            chunk = ids[position : position + limit]
            return self._db.executemany(delete, [(i, *extra) for i in chunk])

        while position < len(ids):
            count, limit = slicer.run(delete_slice)
            deleted += count
            position += limit
        return deleted

    @contextmanager
    def _cleanup_mode(self) -> Iterator[_Slicer]:
        """SQLite: a large page cache, checkpoints by the slicer outside the lock (an automatic
        one would run inside COMMIT and be counted as the slice's time), and a pause between
        slices for the voters. PostgreSQL needs none of these: its writers share no lock."""
        db = self._db
        if not isinstance(db, SqliteDriver):
            yield _Slicer(self)
            return
        cache = db.pragma("cache_size")
        autocheckpoint = db.pragma("wal_autocheckpoint")
        db.pragma("cache_size", -self.CLEANUP_CACHE_KIB)
        db.pragma("wal_autocheckpoint", 0)
        try:
            yield _Slicer(self, db.checkpoint, self.CLEANUP_PAUSE)
        finally:
            db.pragma("wal_autocheckpoint", autocheckpoint)
            db.pragma("cache_size", cache)


def _whole(moment: float) -> int:
    """A time bound for the integer ``time`` columns: ``time >= x`` is ``time >= ceil(x)``,
    and an integer parameter lets PostgreSQL use the index (bigint against a float cannot)."""
    return math.ceil(moment)


def _dedup_in_batch(
    votes: Iterable[tuple[str, str, float]], dedup_window: float
) -> list[list[tuple[str, str, int]]]:
    """The batch's own duplicates removed by the window rule, as rounds: the n-th vote kept
    for a pair goes to round n (an upsert may touch a row once per statement)."""
    kept: dict[tuple[str, str], tuple[int, int]] = {}  # pair -> (last kept time, its round)
    rounds: list[list[tuple[str, str, int]]] = []
    for path, prefix, when in votes:
        moment = int(when)
        pair = (path, prefix)
        last = kept.get(pair)
        if last is not None and last[0] > moment - dedup_window:
            continue
        number = 0 if last is None else last[1] + 1
        kept[pair] = (moment, number)
        if number == len(rounds):
            rounds.append([])
        rounds[number].append((path, prefix, moment))
    return rounds


class _Slicer:
    """Runs one slice of a cleanup per call: a transaction, a checkpoint now and then, a
    pause; and sizes the next slice so that it holds the write lock about ``CLEANUP_HOLD``."""

    def __init__(
        self, db: Database, checkpoint: Callable[[], None] | None = None, pause: float = 0.0
    ) -> None:
        self._db = db
        self._checkpoint = checkpoint
        self._pause = pause
        self.limit = db.CLEANUP_FIRST_SLICE
        self._since_checkpoint = 0

    def run(self, work: Callable[[int], int]) -> tuple[int, int]:
        """``work(limit)`` deletes at most ``limit`` rows (inside the slice's transaction) and
        returns how many it did. Returns (that count, the limit it was given)."""
        db = self._db
        limit = self.limit
        with db.transaction():
            started = time.monotonic()  # after BEGIN: waiting for the lock is not holding it
            count = work(limit)
        held = time.monotonic() - started
        self._since_checkpoint += count
        if self._checkpoint is not None and self._since_checkpoint >= db.CLEANUP_CHECKPOINT_ROWS:
            self._checkpoint()
            self._since_checkpoint = 0
        if count >= limit:  # a full slice: a fair measure of the rate
            scaled = limit * db.CLEANUP_HOLD / max(held, 0.001)
            # At most double or halve per step: one slow or fast slice is not a trend.
            scaled = min(max(scaled, limit / 2), limit * 2)
            self.limit = int(min(max(scaled, 100), db.CLEANUP_MAX_SLICE))
        time.sleep(self._pause)
        return count, limit
