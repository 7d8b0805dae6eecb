"""The on-disk store: where every page, JSON document and cached file lives, and how it gets
there (temporary file in the same folder, then rename: nothing half-written is ever visible).

Nothing else in the program builds a path inside the repository or a tier.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pypi_mirror.config import Config
from pypi_mirror.db import is_disk_full as database_full
from pypi_mirror.names import is_normalized, is_valid_file_path

# Every temporary file starts with this, so inventory can recognise and remove leftovers of a
# crashed run, and the server never serves one (no valid file path starts with a dot).
TEMP_PREFIX = ".pmtmp-"
SCAN_SAMPLE = 8  # top-level folders read first, to tell a cold cache from a warm one
WARM_SCAN_WORKERS = 2


@dataclass(frozen=True)
class Tier:
    index: int
    path: Path
    size_limit: int


def tiers_of(config: Config) -> list[Tier]:
    """The cache tiers, hottest first; a single tier under ``{repo_path}/packages`` by default."""
    if config.cache.tiers:
        return [Tier(i, t.path, t.size_limit) for i, t in enumerate(config.cache.tiers)]
    return [Tier(0, config.repo_path / "packages", config.cache.size_limit)]


def is_disk_full(error: BaseException) -> bool:
    """No space (or quota) left, as the filesystem or the database says it."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return database_full(error)


def temp_path_for(target: Path) -> Path:
    return target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{target.name}")


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _create_temp(temp: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(temp, flags, 0o644)
    except FileNotFoundError:  # first file in this folder: make it, once
        temp.parent.mkdir(parents=True, exist_ok=True)
        return os.open(temp, flags, 0o644)


def atomic_write(
    target: Path, data: bytes, *, durable: bool = False, staging: Path | None = None
) -> None:
    """Write ``data`` to ``target`` so readers see the old file or the new one, never a part.

    Sync writes three of these per project: one open, one write, one rename, no extra
    stat or chmod on the common path. ``staging`` (same filesystem) holds the temporary
    file instead of the target's folder, so a killed run's leftovers sit in one place.
    """
    temp = temp_path_for(staging / target.name if staging is not None else target)
    fd = _create_temp(temp)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
            os.fchmod(fd, 0o644)  # readable by the web server whatever the umask
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remove_empty_parents(path: Path, stop: Path) -> None:
    """Remove empty folders from ``path`` upwards, never ``stop`` itself."""
    current = path
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def move_file(source: Path, target: Path) -> None:
    """Move a file atomically: rename, or across filesystems copy + fsync + rename + delete.

    A reader that opened ``source`` before the move keeps reading it whole (unlink only drops
    the name), and ``target`` appears complete or not at all.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    copy_across_filesystems(source, target)


def copy_across_filesystems(source: Path, target: Path) -> None:
    temp = temp_path_for(target)
    try:
        with open(source, "rb") as src, open(temp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    source.unlink()


class Repo:
    """Paths of the mirror's layout (see SPEC.md, "On-disk layout")."""

    def __init__(self, config: Config) -> None:
        self.root = config.repo_path
        self._listen_port = config.listen_host_port[1]
        self.tiers = tiers_of(config)
        self.simple_dir = self.root / "simple"
        self.json_dir = self.root / "json"

    def create_folders(self) -> None:
        for folder in (self.root, self.simple_dir, self.json_dir, self.pages_staging_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if len(self.tiers) == 1 and self.tiers[0].path == self.root / "packages":
            self.tiers[0].path.mkdir(parents=True, exist_ok=True)

    # -- index -----------------------------------------------------------------------------

    @property
    def root_html(self) -> Path:
        return self.simple_dir / "index.html"

    @property
    def root_json(self) -> Path:
        return self.simple_dir / "index.v1.json"

    # Gzip copies of the root pages (40 MB of HTML at PyPI's size), served to clients that
    # accept gzip; `sync` writes each beside its page.
    @property
    def root_html_gz(self) -> Path:
        return self.simple_dir / "index.html.gz"

    @property
    def root_json_gz(self) -> Path:
        return self.simple_dir / "index.v1.json.gz"

    @property
    def root_staging_dir(self) -> Path:
        """Where the root pages are written before their rename into ``simple/``: a small
        folder, so leftovers of a killed run are found without listing every project."""
        return self.simple_dir / f"{TEMP_PREFIX}root"

    def project_dir(self, name: str) -> Path:
        if not is_normalized(name):
            raise ValueError(f"not a normalised project name: {name!r}")
        return self.simple_dir / name

    def project_html(self, name: str) -> Path:
        return self.project_dir(name) / "index.html"

    def project_json(self, name: str) -> Path:
        return self.project_dir(name) / "index.v1.json"

    def pypi_json(self, name: str) -> Path:
        if not is_normalized(name):
            raise ValueError(f"not a normalised project name: {name!r}")
        return self.json_dir / name

    @property
    def pages_staging_dir(self) -> Path:
        """Where project documents are written before their rename into place: a killed
        run's leftovers are found here without listing a million project folders."""
        return self.root / ".staging"

    @property
    def metrics_dir(self) -> Path:
        """This server's workers' Prometheus values (emptied each time `serve` starts). One
        folder per host and port: several serve nodes may share the repository, and each
        one's /metrics must count its own workers only."""
        return self.root / ".metrics" / f"{socket.gethostname()}-{self._listen_port}"

    def write_project(self, name: str, pypi_json: bytes, html: bytes, simple_json: bytes) -> None:
        """Write a project's three documents, each atomically; the JSON API copy last so that
        a project whose JSON exists always has its pages."""
        staging = self.pages_staging_dir
        folder = self.project_dir(name)
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.project_html(name), html, staging=staging)
        atomic_write(self.project_json(name), simple_json, staging=staging)
        atomic_write(self.pypi_json(name), pypi_json, staging=staging)

    def clear_stale_staging(self, older_than: float = 600.0) -> int:
        """Remove temporary documents left by a killed writer; recent ones may belong to a
        running `serve` and stay. Returns how many were removed."""
        removed = 0
        limit = time.time() - older_than
        try:
            entries = list(os.scandir(self.pages_staging_dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def remove_project(self, name: str) -> None:
        self.pypi_json(name).unlink(missing_ok=True)
        folder = self.project_dir(name)
        for child in (folder / "index.html", folder / "index.v1.json"):
            child.unlink(missing_ok=True)
        if folder.is_dir():
            for leftover in folder.iterdir():
                if is_temp_name(leftover.name):
                    leftover.unlink(missing_ok=True)
            remove_empty_parents(folder, self.simple_dir)

    def read_pypi_json(self, name: str) -> bytes | None:
        try:
            return self.pypi_json(name).read_bytes()
        except FileNotFoundError:
            return None

    # -- cached files ----------------------------------------------------------------------

    def tier_file(self, tier: int, path: str) -> Path:
        if not is_valid_file_path(path):
            raise ValueError(f"not a PyPI file path: {path!r}")
        return self.tiers[tier].path / path

    def delete_file(self, tier: int, path: str) -> None:
        target = self.tier_file(tier, path)
        target.unlink(missing_ok=True)
        remove_empty_parents(target.parent, self.tiers[tier].path)

    def move_between_tiers(self, path: str, source_tier: int, target_tier: int) -> None:
        source = self.tier_file(source_tier, path)
        move_file(source, self.tier_file(target_tier, path))
        remove_empty_parents(source.parent, self.tiers[source_tier].path)

    def scan_tier(self, tier: int, *, workers: int = 1) -> Iterator[str]:
        """The relative path of every regular file in a tier, temporary files included.

        Never stats a file: os.scandir's entry type (d_type) tells files from folders, so a
        walk over hundreds of thousands of files costs one directory read per folder. With
        ``workers`` > 1 the top-level folders are read by that many threads: when the folders
        are not in the kernel's cache, reads wait on the disk, and many waits overlap.
        """
        base = f"{self.tiers[tier].path}{os.sep}"
        if workers <= 1:
            yield from _scan_folder(base, "")
            return
        folders: list[str] = []
        yield from _scan_folder(base, "", folders)

        def scan(name: str) -> list[str]:
            return list(_scan_folder(f"{base}{name}/", f"{name}/"))

        # Many threads only pay when the reads wait on the disk: on a warm cache the walk is
        # CPU-bound and extra threads fight over the GIL (16 threads: 2.5x slower than 2).
        # A few folders read here tell which case this is: waiting shows as wall time that
        # is not CPU time.
        sample, rest = folders[:SCAN_SAMPLE], folders[SCAN_SAMPLE:]
        wall, cpu = time.perf_counter(), time.thread_time()
        sampled = [scan(name) for name in sample]
        waited = (time.perf_counter() - wall) > 2 * (time.thread_time() - cpu) + 0.005
        for found in sampled:
            yield from found
        threads = workers if waited else min(workers, WARM_SCAN_WORKERS)
        with ThreadPoolExecutor(threads, thread_name_prefix="scan") as pool:
            for found in pool.map(scan, rest):
                yield from found


def _scan_folder(folder: str, relative: str, only_top: list[str] | None = None) -> Iterator[str]:
    """Files under ``folder`` (as ``relative`` + the rest). With ``only_top``, the subfolders
    of ``folder`` itself are not entered but listed there."""
    pending = [(folder, relative)]
    while pending:
        current, prefix = pending.pop()
        try:
            entries = os.scandir(current)
        except FileNotFoundError:
            continue  # removed while we walked
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if only_top is not None:
                        only_top.append(entry.name)
                    else:
                        name = entry.name
                        pending.append((f"{current}{name}/", f"{prefix}{name}/"))
                elif entry.is_file(follow_symlinks=False):
                    yield prefix + entry.name
