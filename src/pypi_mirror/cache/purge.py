"""`pypi-mirror cache purge`: remove a project's cached files (or one release's, or one file)
from every tier and from ``local_sizes`` at once, and its pages, for incident response.

The files are found twice over: through the index we hold, and by walking the tiers for names
whose project part (parsed as a wheel or sdist filename, normalised) is the project — a purge
must also catch files the index no longer lists. Votes stay: they are history, not content.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from pypi_mirror.cache.inventory import SCAN_WORKERS
from pypi_mirror.db import Database
from pypi_mirror.index.render import RenderError
from pypi_mirror.index.store import load_index_files
from pypi_mirror.names import METADATA_SUFFIX, filename_of, metadata_path, normalize
from pypi_mirror.repo import Repo, is_temp_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    name: str  # normalised
    version: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class Found:
    path: str
    tier: int
    size: int


@dataclass
class PurgeResult:
    removed: list[Found] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pages_removed: bool = False

    def summary(self, *, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        size = sum(f.size for f in self.removed)
        pages = f", {verb} the project's pages" if self.pages_removed else ""
        failed = f", {len(self.failed)} could not be removed" if self.failed else ""
        return f"purge: {verb} {len(self.removed)} file(s), {size:,} bytes{pages}{failed}"


def _same_version(a: str | Version, b: str) -> bool:
    try:
        return (a if isinstance(a, Version) else Version(a)) == Version(b)
    except InvalidVersion:
        return str(a) == b


def _parsed(filename: str) -> tuple[str, Version] | None:
    """(normalised project, version) of a wheel or sdist filename, None for other names."""
    try:
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return normalize(name), version


def filename_matches(filename: str, selection: Selection) -> bool:
    """Whether a file in a tier (a distribution or its ``.metadata``) is selected."""
    base = filename.removesuffix(METADATA_SUFFIX)
    if selection.filename is not None and base != selection.filename:
        return False
    parsed = _parsed(base)
    if parsed is None or parsed[0] != selection.name:
        return False
    return selection.version is None or _same_version(parsed[1], selection.version)


def indexed_paths(repo: Repo, selection: Selection) -> set[str]:
    """The selected files the index we hold lists, with their ``.metadata`` files."""
    try:
        listed = load_index_files(repo, selection.name) or []
    except (RenderError, OSError) as error:
        log.warning("%s: the stored JSON is unreadable (%s)", selection.name, error)
        listed = []
    paths: set[str] = set()
    for entry in listed:
        if selection.filename is not None and entry.filename != selection.filename:
            continue
        if selection.version is not None and not _same_version(entry.version, selection.version):
            continue
        paths.update((entry.path, metadata_path(entry.path)))
    return paths


def find_files(repo: Repo, selection: Selection, listed: set[str]) -> list[Found]:
    """Every selected file in every tier (one walk per tier); ``listed``: the selected paths
    the index lists."""
    found: list[Found] = []
    for tier in repo.tiers:
        for path in repo.scan_tier(tier.index, workers=SCAN_WORKERS):
            name = filename_of(path)
            if is_temp_name(name):
                continue
            if path in listed or filename_matches(name, selection):
                try:
                    size = os.lstat(repo.tier_file(tier.index, path)).st_size
                except (OSError, ValueError):
                    continue  # gone since the walk, or not a PyPI path (never ours to touch)
                found.append(Found(path, tier.index, size))
    return sorted(found, key=lambda f: (f.path, f.tier))


def has_pages(repo: Repo, db: Database, name: str) -> bool:
    return (
        repo.pypi_json(name).exists()
        or repo.project_html(name).exists()
        or repo.project_json(name).exists()
        or db.get_serial(name) is not None
    )


def purge(repo: Repo, db: Database, selection: Selection, *, dry_run: bool) -> PurgeResult:
    """Remove (or with ``dry_run`` only list) the selected files, then the project's pages.
    The disk goes first, the database after (the next inventory would correct a crash)."""
    result = PurgeResult()
    listed = indexed_paths(repo, selection)
    found = find_files(repo, selection, listed)
    result.pages_removed = has_pages(repo, db, selection.name)
    if dry_run:
        result.removed = found
        return result
    for item in found:
        try:
            repo.delete_file(item.tier, item.path)
        except OSError as error:
            result.failed.append(f"{item.path} (tier {item.tier}): {error.strerror or error}")
            continue
        result.removed.append(item)
    # Also rows of listed files that were not on disk: nothing may count them as cached.
    gone = {item.path for item in result.removed} | listed
    still_held = {item.path for item in found if item not in result.removed}
    if gone - still_held:
        db.delete_local_files(sorted(gone - still_held))
    if result.pages_removed:
        # Pages, JSON copy and serial: sync sees the project as new and fetches it again,
        # `serve` fetches it on the next request. A recorded quarantine stays.
        try:
            repo.remove_project(selection.name)
        except OSError as error:
            result.failed.append(f"pages of {selection.name}: {error.strerror or error}")
        db.delete_serial(selection.name)
    return result
