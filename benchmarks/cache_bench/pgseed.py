"""The benchmark's world on PostgreSQL: the very rows of the SQLite seed (``seed.db``), copied
into a database ``seed`` with COPY, indexes built after the load, then VACUUM ANALYZE (what a
real server's autovacuum would have done: statistics, and the visibility map that lets
phase B's GROUP BY read ``votes_by_file`` without the table).

Built once (a stamp beside the SQLite one names the SQLite seed it was copied from); every
run then works on a file copy of it (CREATE DATABASE ... TEMPLATE seed).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

import psycopg
from bench_pg import BenchPostgres

from cache_bench.seed import World
from pypi_mirror.db import Database
from pypi_mirror.db.location import parse_database_url

SEED_DB = "seed"
PG_SEED_VERSION = 1
BATCH = 100_000


def _copy(source: sqlite3.Connection, pg: psycopg.Connection, table: str, columns: str) -> int:
    rows = 0
    cursor = source.execute(f"SELECT {columns} FROM {table}")
    with pg.cursor() as pg_cursor, pg_cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        while batch := cursor.fetchmany(BATCH):
            for row in batch:
                copy.write_row(row)
            rows += len(batch)
    return rows


def build_pg(
    world: World, server: BenchPostgres, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Make sure database ``seed`` holds the world; returns the build's timings (empty when
    it was already built)."""
    stamp = world.work / "pg-seed.json"
    sqlite_stamp = json.loads((world.work / "seed.json").read_text())
    wanted = {"version": PG_SEED_VERSION, "sqlite": sqlite_stamp, "base": str(server.base)}
    saved = json.loads(stamp.read_text()) if stamp.exists() else {}
    if saved.get("params") == wanted and server.database_exists(SEED_DB):
        return saved["timings"]
    log("seeding PostgreSQL from the SQLite seed (once; kept in benchmarks/.work/) ...")
    stamp.unlink(missing_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    url = server.fresh_database(SEED_DB)
    Database(parse_database_url(url, world.work)).close()  # the schema, by the program's own code
    source = sqlite3.connect(f"file:{world.seed_db}?mode=ro", uri=True)
    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute("SET maintenance_work_mem = '512MB'")  # this session only: index builds
        pg.execute("DROP INDEX votes_by_file")
        pg.execute("DROP INDEX votes_by_time")
        counts = {}
        with pg.transaction():
            for table, columns in (
                ("files", "id, path"),
                ("votes", "file_id, prefix, time"),
                ("remote_sizes", "file_id, size, checked_at"),
                ("local_sizes", "file_id, size, tier"),
                ("vote_last", "file_id, prefix, time"),
                ("settings", "key, value"),
            ):
                pg.execute(f"DELETE FROM {table}")
                counts[table] = _copy(source, pg, table, columns)
            # Ids were copied as they are: the identity must continue after them.
            pg.execute(
                "SELECT setval(pg_get_serial_sequence('files', 'id'), "
                "(SELECT COALESCE(MAX(id), 1) FROM files))"
            )
        timings["copy"] = time.perf_counter() - started
        log(
            "  copied "
            + ", ".join(f"{n:,} {t}" for t, n in counts.items())
            + f" ({timings['copy']:.0f} s)"
        )
        mark = time.perf_counter()
        pg.execute("CREATE INDEX votes_by_file ON votes (file_id, prefix, time)")
        pg.execute("CREATE INDEX votes_by_time ON votes (time)")
        timings["index"] = time.perf_counter() - mark
        log(f"  votes indexed ({timings['index']:.0f} s)")
        mark = time.perf_counter()
        pg.execute("VACUUM (ANALYZE)")
        timings["vacuum_analyze"] = time.perf_counter() - mark
        log(f"  VACUUM ANALYZE ({timings['vacuum_analyze']:.0f} s)")
        pg.execute("CHECKPOINT")
        size = pg.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        timings["size_bytes"] = float(size)
    source.close()
    timings["total"] = time.perf_counter() - started
    stamp.write_text(json.dumps({"params": wanted, "timings": timings}))
    log(f"  done in {timings['total']:.0f} s ({size / (1 << 20):,.0f} MiB)")
    return timings
