"""PEP 503 project names and PyPI file paths (pure functions, no I/O).

A *file path* throughout the code is the part of a PyPI file URL after ``/packages/``:
``ab/cd/<60 hex>/<filename>`` (optionally ending in ``.metadata`` for PEP 658 files). It is the
key of votes, ``local_sizes`` and ``remote_sizes``, and the relative path inside every tier.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion

# PyPI's own layout: two hex, two hex, sixty hex (blake2b-256 split 2/2/60), then the filename.
_FILENAME = r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,254}"
FILE_PATH_RE = re.compile(rf"[0-9a-f]{{2}}/[0-9a-f]{{2}}/[0-9a-f]{{60}}/{_FILENAME}")
_URL_FILE_PATH_RE = re.compile(rf"(?:^|/)packages/({FILE_PATH_RE.pattern})$")
_PROJECT_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")

METADATA_SUFFIX = ".metadata"


def normalize(name: str) -> str:
    """The PEP 503 normalised form of a project name."""
    return str(canonicalize_name(name))


def is_valid_project_name(name: str) -> bool:
    """True for names PyPI could hold (PEP 508 identifier shape, bounded length)."""
    return _PROJECT_NAME_RE.fullmatch(name) is not None


def is_normalized(name: str) -> bool:
    return is_valid_project_name(name) and normalize(name) == name


def is_valid_file_path(path: str) -> bool:
    """True when ``path`` has the exact shape of a PyPI file path (nothing else may touch disk)."""
    if FILE_PATH_RE.fullmatch(path) is None:
        return False
    filename = path.rsplit("/", 1)[1]
    return filename not in (".", "..") and ".." not in filename


def file_path_from_url(url: str) -> str | None:
    """Map an upstream file URL, absolute or relative, to its file path; None if not PyPI-shaped.

    PyPI's JSON API gives either ``https://files.pythonhosted.org/packages/ab/cd/…/f.whl`` or
    ``../../packages/packages/ab/cd/…/f.whl``; both must land on the same local path.
    """
    if "%" not in url and "?" not in url and "#" not in url:
        # What PyPI always sends: no escapes, no query. The path is whatever follows the
        # last "/packages/" (sync renders ~30 of these per project: keep it cheap).
        start = url.rfind("/packages/")
        if start >= 0:
            candidate = url[start + len("/packages/") :]
            return candidate if is_valid_file_path(candidate) else None
    path = unquote(urlsplit(url).path)
    match = _URL_FILE_PATH_RE.search(path)
    if match is None:
        return None
    candidate = match.group(1)
    return candidate if is_valid_file_path(candidate) else None


def filename_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def metadata_path(path: str) -> str:
    """The PEP 658 metadata file path that belongs to a distribution file path."""
    return path + METADATA_SUFFIX


# A release version as it may appear in an upstream URL path: PEP 440 and PyPI's legacy
# forms, from a strict alphabet with no "/", "%" or "..": safe as one path segment.
_VERSION_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._+!-]{0,126}[A-Za-z0-9])?")


def is_valid_version(text: str) -> bool:
    """True for a version string that may go into an upstream URL as one path segment.

    Accepts every normalised PEP 440 version, the spellings ``packaging`` also reads
    (``v1.0``, ``1.0-beta``, ``0.1_rc``, ``1.0RC1``) and PyPI's pre-PEP 440 legacy forms of
    the same alphabet (``2004d``, ``1.0.0-SNAPSHOT``); rejects anything with "/", "%", "..",
    whitespace, or a separator at either end (never a dot-segment, never an escape).
    """
    return _VERSION_RE.fullmatch(text) is not None and ".." not in text


_EXTENSIONS = re.compile(r"\.(tar\.gz|tar\.bz2|tar\.xz|tar\.z|tgz|zip|egg|exe|msi|rpm|dmg|whl)$")


def project_names(filename: str) -> list[str]:
    """The projects a file may belong to, most likely first (normalised names)."""
    base = filename.removesuffix(METADATA_SUFFIX)
    names: list[str] = []
    try:
        if base.endswith(".whl"):
            names.append(parse_wheel_filename(base)[0])
        else:
            names.append(parse_sdist_filename(base)[0])
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        pass
    # Odd names (eggs, installers, old sdists): the name is the parts before the first
    # part that starts with a digit; then every shorter prefix, just in case.
    parts = _EXTENSIONS.sub("", base, count=1).split("-")
    cut = next((i for i, part in enumerate(parts) if i and part[:1].isdigit()), len(parts))
    guesses = ["-".join(parts[:cut])] + ["-".join(parts[:i]) for i in range(1, len(parts))]
    for guess in guesses:
        name = normalize(guess) if guess else ""
        if name and is_normalized(name) and name not in names:
            names.append(name)
    return names


def project_of(filename: str) -> str | None:
    """The project a distribution file (or its ``.metadata``) most likely belongs to."""
    names = project_names(filename)
    return names[0] if names else None


def dist_filename_of(path: str) -> str:
    """The distribution's file name of a file path (a ``.metadata`` path: its wheel's)."""
    return filename_of(path).removesuffix(METADATA_SUFFIX)
