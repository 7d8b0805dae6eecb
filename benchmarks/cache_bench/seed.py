"""The benchmark's world: a seeded database and a tree of (sparse) files in two tiers.

Built once and kept in ``benchmarks/.work/`` (a stamp file says which parameters built it);
every benchmark run works on a copy of the database and on the same files, which the cache
manager leaves untouched because the seed places every local file exactly where the plan
wants it and leaves no room for anything else.

Shape: ``FILES`` distinct voted files with ``VOTES`` votes in the window (Zipf-like counts),
``OLD_VOTES`` more votes older than the window (phase E drops them), a tenth of the files
voted from one prefix only (below ``min_vote_count``), the ``LOCAL`` best-ranked files on disk
(the top ``HOT`` in tier 0), the rest with fresh ``remote_sizes`` rows and no room left.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pypi_mirror.cache.plan import Entry, assign, rank
from pypi_mirror.db import Database

FILES = 500_000
VOTES = 10_000_000
OLD_VOTES = 500_000
LOCAL = 300_000
HOT = 100_000
PREFIXES = 60_000
WINDOW = 7 * 86400.0
SEED_VERSION = 1


@dataclass(frozen=True)
class World:
    work: Path
    seed_db: Path
    tier_paths: tuple[Path, Path]
    limits: tuple[int, int]
    now: float
    local_files: int


def _path(number: int) -> str:
    digest = hashlib.blake2b(number.to_bytes(8, "little"), digest_size=32).hexdigest()
    project = f"proj{number // 25}"
    filename = f"{project}-1.{number % 25}-py3-none-any.whl"
    return f"{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"


def _vote_counts(rng: random.Random) -> list[int]:
    """Zipf-like counts, at least 2 each, summing to exactly VOTES."""
    weights = [1.0 / (n + 1) ** 0.8 for n in range(FILES)]
    spare = VOTES - 2 * FILES
    total = sum(weights)
    counts = [2 + int(spare * w / total) for w in weights]
    deficit = VOTES - sum(counts)
    for _ in range(deficit):
        counts[rng.randrange(FILES)] += 1
    return counts


def _params() -> dict[str, int | float]:
    return {
        "version": SEED_VERSION,
        "files": FILES,
        "votes": VOTES,
        "old_votes": OLD_VOTES,
        "local": LOCAL,
        "hot": HOT,
    }


def build(work: Path, log: Callable[[str], None] = print) -> World:
    stamp = work / "seed.json"
    seed_db = work / "seed.db"
    tiers = (work / "tier0", work / "tier1")
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved["params"] == _params() and seed_db.exists():
            return World(
                work,
                seed_db,
                tiers,
                (saved["limits"][0], saved["limits"][1]),
                saved["now"],
                saved["local_files"],
            )
    log("building the benchmark world (once; cached in benchmarks/.work/) ...")
    started = time.perf_counter()
    stamp.unlink(missing_ok=True)
    for folder in tiers:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    seed_db.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{seed_db}{suffix}").unlink(missing_ok=True)

    rng = random.Random(20261126)
    now = float(int(time.time()))
    paths = [_path(n) for n in range(FILES)]
    counts = _vote_counts(rng)
    single_prefix = set(rng.sample(range(FILES), FILES // 10))
    sizes = [rng.randrange(1 << 10, 50 << 20) for _ in range(FILES)]

    Database(seed_db).close()  # the schema, by the program's own migrations
    conn = sqlite3.connect(seed_db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("DROP INDEX votes_by_file")
    conn.execute("DROP INDEX votes_by_time")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO files (id, path) VALUES (?, ?)", enumerate(paths, 1))
    prefixes = [f"10.{p // 256 % 256}.{p % 256}.0/24" for p in range(PREFIXES)]

    def votes() -> Iterator[tuple[int, str, int]]:
        for n in range(FILES):
            file_id = n + 1
            start = n * 7919 % PREFIXES
            for k in range(counts[n]):
                prefix = prefixes[start if n in single_prefix else (start + k) % PREFIXES]
                yield file_id, prefix, int(now - rng.random() * WINDOW * 0.9)
        for _ in range(OLD_VOTES):
            yield (
                rng.randrange(FILES) + 1,
                prefixes[rng.randrange(PREFIXES)],
                int(now - WINDOW - 3600 - rng.random() * WINDOW),
            )

    conn.executemany("INSERT INTO votes (file_id, prefix, time) VALUES (?, ?, ?)", votes())
    conn.execute("COMMIT")
    log(f"  votes inserted ({time.perf_counter() - started:.0f} s)")
    conn.execute("CREATE INDEX votes_by_file ON votes (file_id, prefix, time)")
    conn.execute("CREATE INDEX votes_by_time ON votes (time)")
    log(f"  votes indexed ({time.perf_counter() - started:.0f} s)")

    # Place the best-ranked candidates exactly where the plan puts them, with limits that
    # leave no byte free: the cache manager then has nothing to do.
    candidates = [
        Entry(paths[n], sizes[n], counts[n], None) for n in range(FILES) if n not in single_prefix
    ]
    ranked = rank(candidates)
    hot_bytes = sum(e.size for e in ranked[:HOT])
    warm_bytes = sum(e.size for e in ranked[HOT:LOCAL])
    limits = (hot_bytes, warm_bytes)
    targets = assign(ranked, limits)
    assert targets[:HOT] == [0] * HOT and targets[HOT:LOCAL] == [1] * (LOCAL - HOT)
    assert all(t is None for t in targets[LOCAL:])
    for entry, target in zip(ranked[:LOCAL], targets, strict=False):
        full = tiers[target] / entry.path
        full.parent.mkdir(parents=True, exist_ok=True)
        with open(full, "wb") as handle:
            handle.truncate(entry.size)  # sparse: the size is real, the blocks are not
    log(f"  {LOCAL} files placed ({time.perf_counter() - started:.0f} s)")
    # The files not on disk have a fresh remote size: phase B needs no index and no HEAD.
    local = {e.path for e in ranked[:LOCAL]}
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO remote_sizes (file_id, size, checked_at) VALUES (?, ?, ?)",
        ((n + 1, sizes[n], now) for n in range(FILES) if paths[n] not in local),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    os.sync()
    stamp.write_text(
        json.dumps({"params": _params(), "limits": list(limits), "now": now, "local_files": LOCAL})
    )
    log(f"  done in {time.perf_counter() - started:.0f} s")
    return World(work, seed_db, tiers, limits, now, LOCAL)
