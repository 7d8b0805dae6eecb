"""Pins: files kept in the hottest tier whatever their votes (``cache.pin`` and
``pypi-mirror cache pin``).

A pin is a requirement specifier (``numpy``, ``torch>=2.3``, ``requests==2.32.*``). It means
every file of the newest release of the project that matches it, as listed by the index we
hold (``json/{name}``); with ``all_versions`` (``cache pin --all-versions``), the files of
every matching release. Yanked releases are skipped unless nothing else matches.

Pins from the config come first, in the file's order, then those added from the command
line, oldest first; they are stored in the settings table (one JSON value). When the pinned
files exceed tier 0, the earlier pins take its space first (oldest-first): a file that no
longer fits is not pinned this run and is reported; it competes with its votes like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from pypi_mirror.cache.plan import Entry
from pypi_mirror.cache.report import CacheResult
from pypi_mirror.cache.sizes import Candidates
from pypi_mirror.config import Config
from pypi_mirror.db import Database
from pypi_mirror.filters import filters_of
from pypi_mirror.index.quarantine import load as load_quarantined
from pypi_mirror.index.quarantine import refused_paths
from pypi_mirror.index.render import IndexFile
from pypi_mirror.index.store import load_index_files
from pypi_mirror.names import METADATA_SUFFIX, normalize
from pypi_mirror.repo import Repo

SETTING_KEY = "cache.pins"
UNKNOWN = -1  # the size of a .metadata file, which the index does not give


@dataclass(frozen=True, slots=True)
class Pin:
    spec: str
    source: str  # "config" or "cli"
    all_versions: bool = False

    @property
    def requirement(self) -> Requirement:
        return parse_pin(self.spec)


@dataclass(frozen=True, slots=True)
class PinnedFile:
    path: str
    size: int
    spec: str


def parse_pin(spec: str) -> Requirement:
    """The requirement ``spec`` names; ValueError with the reason when it is not one (or
    carries extras, a marker or a URL, which mean nothing for a cache)."""
    try:
        requirement = Requirement(spec)
    except InvalidRequirement as error:
        raise ValueError(f"invalid pin {spec!r}: {error}") from None
    if requirement.url or requirement.marker or requirement.extras:
        raise ValueError(f"invalid pin {spec!r}: only a name and version specifiers")
    return requirement


def cli_pins(db: Database) -> list[Pin]:
    raw = db.get_setting(SETTING_KEY)
    if not raw:
        return []
    return [Pin(item["spec"], "cli", bool(item.get("all_versions"))) for item in json.loads(raw)]


def _store(db: Database, pins: Sequence[Pin]) -> None:
    value = [{"spec": p.spec, "all_versions": p.all_versions} for p in pins]
    db.set_setting(SETTING_KEY, json.dumps(value))


def add_pins(db: Database, specs: Iterable[str], *, all_versions: bool) -> list[str]:
    """Store ``specs`` (already validated); returns those that were new. Re-pinning a spec
    updates its ``all_versions`` but keeps its place in line."""
    pins = cli_pins(db)
    added = []
    for spec in specs:
        for index, pin in enumerate(pins):
            if _same(pin.spec, spec):
                pins[index] = Pin(pin.spec, "cli", all_versions)
                break
        else:
            pins.append(Pin(spec, "cli", all_versions))
            added.append(spec)
    _store(db, pins)
    return added


def remove_pins(db: Database, specs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Forget ``specs``: (removed, not found). Config pins are not touched here."""
    pins = cli_pins(db)
    removed, missing = [], []
    for spec in specs:
        kept = [pin for pin in pins if not _same(pin.spec, spec)]
        (removed if len(kept) < len(pins) else missing).append(spec)
        pins = kept
    _store(db, pins)
    return removed, missing


def _same(a: str, b: str) -> bool:
    """Same pin up to name normalisation and spacing (``Requests == 2.*`` is ``requests==2.*``)."""
    ra, rb = parse_pin(a), parse_pin(b)
    return normalize(ra.name) == normalize(rb.name) and ra.specifier == rb.specifier


def all_pins(config: Config, db: Database) -> list[Pin]:
    return [Pin(spec, "config") for spec in config.cache.pin] + cli_pins(db)


def files_of(pin: Pin, files: Sequence[IndexFile]) -> list[IndexFile]:
    """The files of ``files`` (one project's index) that ``pin`` means."""
    releases: dict[Version, list[IndexFile]] = {}
    for file in files:
        try:
            releases.setdefault(Version(file.version), []).append(file)
        except InvalidVersion:
            continue
    # packaging's (and pip's) rule: pre-releases match only when the specifier names one or
    # no final release matches.
    matching = set(pin.requirement.specifier.filter(releases))
    releases = {version: fs for version, fs in releases.items() if version in matching}
    if pin.all_versions:
        return [file for version in sorted(releases) for file in releases[version]]
    current = [v for v, fs in releases.items() if not all(f.yanked for f in fs)]
    chosen = max(current or releases, default=None)
    return [] if chosen is None else releases[chosen]


def pinned_files(repo: Repo, pins: Sequence[Pin]) -> tuple[list[PinnedFile], list[str]]:
    """The files every pin means, in pin order (each once); and notes on pins that mean
    nothing (project not held, no matching release)."""
    seen: set[str] = set()
    found: list[PinnedFile] = []
    notes: list[str] = []
    for pin in pins:
        name = normalize(pin.requirement.name)
        files = load_index_files(repo, name)
        if files is None:
            notes.append(f"pin {pin.spec!r}: project {name} is not in the index held")
            continue
        matched = files_of(pin, files)
        if not matched:
            notes.append(f"pin {pin.spec!r}: no release matches")
        for file in sorted(matched, key=lambda f: f.filename):
            if file.path not in seen:
                seen.add(file.path)
                found.append(PinnedFile(file.path, file.size, pin.spec))
                if file.has_metadata:
                    # Its size is not in the index: kept when held (or voted), not fetched.
                    found.append(PinnedFile(file.path + METADATA_SUFFIX, UNKNOWN, pin.spec))
    return found, notes


def apply_pins(
    config: Config,
    db: Database,
    repo: Repo,
    candidates: Candidates,
    ranked: list[Entry],
    local: Mapping[str, tuple[int, int]],
    result: CacheResult,
) -> list[Entry]:
    """``ranked`` with the pinned files first (phase C): ``assign``'s first fit then puts
    them in tier 0, which they fit by construction; the plan fills what is left. A pinned
    file that is local but no candidate leaves ``candidates.others`` (it is not deleted)."""
    pins = all_pins(config, db)
    if not pins:
        return ranked
    pinned, notes = pinned_files(repo, pins)
    refused = refused_paths(load_quarantined(repo.root))
    filters = filters_of(config.filters)
    result.notes.extend(notes)
    by_path = {entry.path: entry for entry in ranked}
    others = {entry.path: entry for entry in candidates.others}
    room = result.tiers[0].limit
    first: list[Entry] = []
    excess_files = excess_bytes = 0
    for file in pinned:
        if file.path in refused or filters.keeps_out_of_cache(file.path):
            continue  # quarantined, denied or excluded files are not cached, pinned or not
        held = local.get(file.path)
        voted = by_path.get(file.path)
        size = held[0] if held is not None else voted.size if voted else file.size
        if size == UNKNOWN:
            continue
        if size > room:
            excess_files += 1
            excess_bytes += size
            continue
        room -= size
        entry = by_path.pop(file.path, None) or others.pop(file.path, None)
        if entry is None:
            entry = Entry(file.path, size, 0, held[1] if held is not None else None)
        candidates.votes_of_others.pop(file.path, None)  # counted once, as a ranked entry
        first.append(entry)
    candidates.others = list(others.values())
    result.notes.append(
        f"pins: {len(first)} files in tier 0 ({result.tiers[0].limit - room:,} bytes)"
    )
    if excess_files:
        result.notes.append(
            f"pins exceed tier 0: {excess_files} files ({excess_bytes:,} bytes) not pinned "
            "this run (earlier pins take the space first)"
        )
    return first + [entry for entry in ranked if entry.path in by_path]
