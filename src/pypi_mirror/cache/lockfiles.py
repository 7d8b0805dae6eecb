"""What a requirements file or a lock file asks for, file by file (parsing only, no I/O beyond
reading the files): ``requirements.txt`` with ``--hash`` options, ``uv.lock`` and PEP 751
``pylock.toml``.

A requirement names a project, a version and the sha256 of each acceptable file; a lock file
names each file's URL and hash. Both become ``Wanted`` entries; how they are found upstream is
cache/prewarm.py's job.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from pypi_mirror.names import normalize

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
# "#" starts a comment at the start of a line or after whitespace (pip's rule): a URL's
# fragment ("…whl#sha256=…") is not a comment.
_COMMENT_RE = re.compile(r"(^|\s+)#.*$")


class LockFileError(ValueError):
    """A file that cannot be read as the format it claims to be."""


@dataclass(frozen=True)
class Wanted:
    """One file to fetch. ``url`` for lock files; ``name`` + ``version`` for requirements."""

    origin: str  # "requirements.txt:12" or "uv.lock: numpy 2.0": where it was asked for
    sha256: str  # lower-case hex
    name: str | None = None  # normalised
    version: str | None = None
    url: str | None = None
    size: int | None = None


@dataclass
class Parsed:
    wanted: list[Wanted]
    skipped: list[str]  # "origin: why", for what cannot be pre-warmed


def parse_file(path: Path) -> Parsed:
    """By content: TOML with ``lock-version`` is a PEP 751 lock, TOML with ``[[package]]`` a
    ``uv.lock``; anything else not named ``*.toml`` is a requirements file (``requirements.lock``
    of some tools is one)."""
    if path.suffix in (".toml", ".lock"):
        try:
            doc = _load_toml(path)
        except LockFileError:
            if path.suffix == ".toml":
                raise
        else:
            if "lock-version" in doc:
                return parse_pylock(path, doc)
            if "package" in doc:
                return parse_uv_lock(path, doc)
            if path.suffix == ".toml":
                raise LockFileError(f"{path}: neither a pylock.toml nor a uv.lock")
    return parse_requirements(path)


# -- requirements.txt ----------------------------------------------------------------------


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each line, comments removed, continuations joined."""
    lines: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT_RE.sub("", raw)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            lines.append((start, pending.strip()))
        pending = ""
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def parse_requirements(path: Path, _seen: frozenset[Path] = frozenset()) -> Parsed:
    """``name==version --hash=sha256:…`` lines; ``-r``/``--requirement`` includes are read
    relative to the including file; other options are ignored."""
    resolved = path.resolve()
    if resolved in _seen:  # an include cycle: read each file once
        return Parsed([], [])
    try:
        text = path.read_text()
    except OSError as error:
        raise LockFileError(f"{path}: {error.strerror or error}") from None
    parsed = Parsed([], [])
    for number, line in _logical_lines(text):
        origin = f"{path.name}:{number}"
        # Split on blanks only: a marker's quotes ('; python_version < "3.9"') must stay.
        words = line.split()
        include = _include_target(words)
        if include is not None:
            child = parse_requirements(path.parent / include, _seen | {resolved})
            parsed.wanted.extend(child.wanted)
            parsed.skipped.extend(child.skipped)
            continue
        if words[0].startswith("-"):
            continue  # --index-url, -c, --no-binary …: not files
        _requirement(origin, words, parsed)
    return parsed


def _include_target(words: list[str]) -> str | None:
    first = words[0]
    if first in ("-r", "--requirement") and len(words) > 1:
        return words[1].strip("'\"")
    for prefix in ("-r", "--requirement="):
        if first.startswith(prefix) and len(first) > len(prefix):
            return first[len(prefix) :].strip("'\"")
    return None


def _requirement(origin: str, words: list[str], parsed: Parsed) -> None:
    # The requirement, then its options (--hash, --config-settings …).
    cut = next((i for i, word in enumerate(words) if word.startswith("--")), len(words))
    spec = words[:cut]
    hashes: list[str] = []
    for index in range(cut, len(words)):
        word = words[index]
        if word == "--hash" and index + 1 < len(words):
            hashes.append(words[index + 1])
        elif word.startswith("--hash="):
            hashes.append(word.removeprefix("--hash="))
    try:
        requirement = Requirement(" ".join(spec))
    except InvalidRequirement as error:
        parsed.skipped.append(f"{origin}: not a requirement ({error})")
        return
    pins = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
    if requirement.url or len(pins) != 1 or "*" in pins[0]:
        parsed.skipped.append(f"{origin}: {requirement.name} is not pinned with ==")
        return
    sha256s = [h.split(":", 1)[1].lower() for h in hashes if h.startswith("sha256:")]
    if not sha256s:
        parsed.skipped.append(f"{origin}: {requirement.name} has no --hash=sha256:")
        return
    name = normalize(requirement.name)
    for sha in sha256s:
        if _SHA256_RE.fullmatch(sha) is None:
            parsed.skipped.append(f"{origin}: {requirement.name}: malformed hash {sha!r}")
            continue
        parsed.wanted.append(Wanted(origin, sha, name=name, version=pins[0]))


# -- uv.lock and pylock.toml ---------------------------------------------------------------


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise LockFileError(f"{path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise LockFileError(f"{path}: not TOML ({error})") from None


def _table_list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def parse_uv_lock(path: Path, doc: dict[str, Any] | None = None) -> Parsed:
    """``[[package]]`` entries: ``sdist = {url, hash = "sha256:…", size}`` and ``wheels``."""
    doc = _load_toml(path) if doc is None else doc
    parsed = Parsed([], [])
    for package in _table_list(doc.get("package")):
        label = f"{path.name}: {package.get('name', '?')} {package.get('version', '')}".rstrip()
        artifacts = _table_list(package.get("wheels"))
        if isinstance(package.get("sdist"), dict):
            artifacts.append(package["sdist"])
        for artifact in artifacts:
            digest = artifact.get("hash")
            is_sha256 = isinstance(digest, str) and digest.startswith("sha256:")
            sha = digest.removeprefix("sha256:") if is_sha256 else ""
            _add_artifact(parsed, label, artifact, sha)
    return parsed


def parse_pylock(path: Path, doc: dict[str, Any] | None = None) -> Parsed:
    """PEP 751 ``[[packages]]`` entries: ``sdist`` and ``wheels`` with ``url`` and
    ``hashes = {sha256 = "…"}``; ``vcs``, ``directory`` and ``archive`` are not index files."""
    doc = _load_toml(path) if doc is None else doc
    if "lock-version" not in doc:
        raise LockFileError(f"{path}: no lock-version (not a PEP 751 lock file)")
    parsed = Parsed([], [])
    for package in _table_list(doc.get("packages")):
        label = f"{path.name}: {package.get('name', '?')} {package.get('version', '')}".rstrip()
        artifacts = _table_list(package.get("wheels"))
        if isinstance(package.get("sdist"), dict):
            artifacts.append(package["sdist"])
        for other in ("vcs", "directory", "archive"):
            if other in package:
                parsed.skipped.append(f"{label}: {other} source, not an index file")
        for artifact in artifacts:
            hashes = artifact.get("hashes")
            sha = hashes.get("sha256", "") if isinstance(hashes, dict) else ""
            _add_artifact(parsed, label, artifact, sha if isinstance(sha, str) else "")
    return parsed


def _add_artifact(parsed: Parsed, label: str, artifact: dict[str, Any], sha: str) -> None:
    url = artifact.get("url")
    if not isinstance(url, str):
        parsed.skipped.append(f"{label}: an entry without url")
        return
    if _SHA256_RE.fullmatch(sha) is None:
        parsed.skipped.append(f"{label}: {url}: no sha256 hash")
        return
    size = artifact.get("size")
    known = size if isinstance(size, int) and not isinstance(size, bool) else None
    parsed.wanted.append(Wanted(label, sha.lower(), url=url, size=known))
