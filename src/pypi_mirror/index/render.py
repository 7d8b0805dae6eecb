"""PyPI's JSON API document (``/pypi/<name>/json``) ─► this mirror's simple pages (pure, no I/O).

One renderer for both ``serve`` (on-demand fetch) and ``sync``. It writes:

- the PEP 503 HTML page (+ PEP 592 yanked, PEP 629 repository version, PEP 658/714 core
  metadata attributes, the ``<!--SERIAL n-->`` trailer), and
- the PEP 691 JSON page (+ PEP 700 ``versions``, ``size``, ``upload-time``),

both with what only the upstream's PEP 691 page tells (``SimpleExtras``, when it was read):
PEP 740 ``provenance`` per file (API 1.3) and PEP 792 ``project-status`` (API 1.4). A
quarantined project's pages list no files.

Every file link is relative (``../../packages/<file path>``) so installers come back through the
mirror, whatever URL prefix or reverse proxy sits in front of it; a file whose upstream URL does
not have PyPI's shape is left out rather than linked off-mirror.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

import orjson
from packaging.version import InvalidVersion, Version

from pypi_mirror.names import file_path_from_url, filename_of, is_valid_project_name, normalize

API_VERSION = "1.1"
PROVENANCE_API_VERSION = "1.3"  # PEP 740
STATUS_API_VERSION = "1.4"  # PEP 792
PROJECT_STATUSES = frozenset({"active", "archived", "deprecated", "quarantined"})
# From /simple/<name>/ back up to the prefix, then into the packages tree.
FILE_URL_BASE = "../../packages/"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# upload_time_iso_8601 as PyPI writes it ("…:42.157563Z" or "…:42Z"); upload_time lacks the Z.
_UPLOAD_TIME_RE = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(?:Z|\+00:00)?", re.ASCII
)


class RenderError(ValueError):
    """The document is not a usable PyPI JSON API document."""


@dataclass(frozen=True, slots=True)
class IndexFile:
    path: str  # "ab/cd/<60 hex>/<filename>", the part after /packages/
    filename: str
    version: str
    sha256: str | None
    size: int
    metadata_sha256: str | None  # hash of the .metadata file, when advertised with one
    has_metadata: bool  # the upstream advertises core metadata (with or without a hash)
    yanked: bool | str  # False, True, or the non-empty reason
    requires_python: str | None = None
    upload_time: str | None = None  # always "yyyy-mm-ddThh:mm:ss.ffffffZ"


@dataclass(frozen=True)
class SimpleExtras:
    """What the upstream's PEP 691 project page carries beyond ``/pypi/<name>/json``."""

    status: str | None = None  # PEP 792 project status, when the page had one
    status_reason: str | None = None
    # PEP 740: filename → absolute provenance URL (or None); None when the page had no
    # provenance keys at all (an API before 1.3).
    provenance: dict[str, str | None] | None = None

    @property
    def quarantined(self) -> bool:
        return self.status == "quarantined"

    @property
    def api_version(self) -> str:
        if self.status is not None:
            return STATUS_API_VERSION
        return PROVENANCE_API_VERSION if self.provenance is not None else API_VERSION


@dataclass(frozen=True)
class RenderedProject:
    name: str  # PEP 503 normalised
    serial: int  # the body's last_serial
    html: bytes  # PEP 503 page
    json: bytes  # PEP 691 page
    files: tuple[IndexFile, ...]  # what the pages list (none for a quarantined project)
    quarantined: bool = False


# -- parsing -------------------------------------------------------------------------------


def parse_pypi_json(body: bytes) -> dict[str, Any]:
    """Decode and shape-check a ``/pypi/<name>/json`` body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RenderError(f"not JSON: {error}") from None
    _check_shape(doc)
    return doc


def _check_shape(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise RenderError(f"top level is {type(doc).__name__}, expected an object")
    info = doc.get("info")
    if not isinstance(info, dict):
        raise RenderError("no 'info' object")
    name = info.get("name")
    if not isinstance(name, str) or not is_valid_project_name(name):
        raise RenderError(f"'info.name' is not a project name: {name!r}")
    if not isinstance(doc.get("releases"), dict):
        raise RenderError("no 'releases' object (a per-version document?)")
    serial = doc.get("last_serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise RenderError(f"'last_serial' is not a serial: {serial!r}")


def _upload_time(entry: dict[str, Any]) -> str | None:
    raw = entry.get("upload_time_iso_8601") or entry.get("upload_time")
    if not isinstance(raw, str):
        return None
    match = _UPLOAD_TIME_RE.fullmatch(raw)
    if match is None:
        return None
    seconds, fraction = match.groups()
    # PEP 700's form with exactly six fraction digits, whatever precision the upstream gave.
    return f"{seconds}.{(fraction or '')[:6].ljust(6, '0')}Z"


def _core_metadata(entry: dict[str, Any]) -> tuple[bool, str | None]:
    """(advertised, sha256 of the METADATA file) from a file entry."""
    value = entry.get("core-metadata")
    if value is None:
        # Older spellings of the same field (PEP 658's original name).
        value = entry.get("dist-info-metadata", entry.get("data-dist-info-metadata"))
    if isinstance(value, dict):
        digest = value.get("sha256")
        if isinstance(digest, str) and _SHA256_RE.fullmatch(digest):
            return True, digest
        return bool(value), None
    return value is True, None


def _index_file(version: str, entry: Any) -> IndexFile | None:
    """One file entry, or None when it cannot be linked safely."""
    if not isinstance(entry, dict):
        return None
    filename = entry.get("filename")
    url = entry.get("url")
    size = entry.get("size")
    if not isinstance(filename, str) or not isinstance(url, str):
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    path = file_path_from_url(url)
    # The anchor text must name the file the link leads to.
    if path is None or filename_of(path) != filename:
        return None
    digests = entry.get("digests")
    sha256 = digests.get("sha256") if isinstance(digests, dict) else None
    if not isinstance(sha256, str) or _SHA256_RE.fullmatch(sha256) is None:
        sha256 = None
    has_metadata, metadata_sha256 = _core_metadata(entry)
    yanked: bool | str = False
    if entry.get("yanked") is True:
        reason = entry.get("yanked_reason")
        yanked = reason if isinstance(reason, str) and reason else True
    requires_python = entry.get("requires_python")
    if not isinstance(requires_python, str) or not requires_python:
        requires_python = None
    return IndexFile(
        path=path,
        filename=filename,
        version=version,
        sha256=sha256,
        size=size,
        metadata_sha256=metadata_sha256,
        has_metadata=has_metadata,
        yanked=yanked,
        requires_python=requires_python,
        upload_time=_upload_time(entry),
    )


def index_files(doc: dict[str, Any]) -> list[IndexFile]:
    """Every linkable file of every release, sorted by filename (first entry wins on a clash)."""
    by_name: dict[str, IndexFile] = {}
    for version, entries in doc["releases"].items():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            file = _index_file(version, entry)
            if file is not None and file.filename not in by_name:
                by_name[file.filename] = file
    return [by_name[filename] for filename in sorted(by_name)]


def _version_key(version: str) -> tuple[int, Version | str]:
    try:
        return 1, Version(version)
    except InvalidVersion:
        # Legacy versions have no place in PEP 440 order: put them first, in string order.
        return 0, version


def sorted_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=_version_key)


# -- project pages -------------------------------------------------------------------------


def _html_page(name: str, serial: int, files: list[IndexFile], extras: SimpleExtras) -> bytes:
    title = escape(name)
    head = f'<meta name="pypi:repository-version" content="{extras.api_version}">\n'
    if extras.status is not None:
        head += f'<meta name="pypi:project-status" content="{extras.status}">\n'
        if extras.status_reason:
            reason = escape(extras.status_reason)
            head += f'<meta name="pypi:project-status-reason" content="{reason}">\n'
    parts = [
        f"<!DOCTYPE html>\n<html>\n<head>\n{head}"
        f"<title>Links for {title}</title>\n</head>\n<body>\n<h1>Links for {title}</h1>\n"
    ]
    provenance = extras.provenance or {}
    append = parts.append
    for file in files:
        href = FILE_URL_BASE + file.path
        if file.sha256 is not None:
            href += "#sha256=" + file.sha256
        # Path and filename passed names.FILE_PATH_RE: nothing in them needs escaping.
        attrs = f'<a href="{href}"'
        if file.requires_python is not None:
            attrs += f' data-requires-python="{escape(file.requires_python)}"'
        if file.yanked is not False:
            reason = "" if file.yanked is True else escape(file.yanked)
            attrs += f' data-yanked="{reason}"'
        if file.has_metadata:
            value = "true" if file.metadata_sha256 is None else "sha256=" + file.metadata_sha256
            # PEP 714's name, plus PEP 658's for pip < 23.2.
            attrs += f' data-core-metadata="{value}" data-dist-info-metadata="{value}"'
        url = provenance.get(file.filename)
        if url is not None:
            attrs += f' data-provenance="{escape(url)}"'
        append(f"{attrs}>{file.filename}</a><br/>\n")
    append(f"</body>\n</html>\n<!--SERIAL {serial}-->\n")
    return "".join(parts).encode()


def _json_page(
    name: str, serial: int, files: list[IndexFile], versions: list[str], extras: SimpleExtras
) -> bytes:
    entries = []
    provenance = extras.provenance
    append = entries.append
    for file in files:
        if file.has_metadata:
            core: bool | dict[str, str] = (
                True if file.metadata_sha256 is None else {"sha256": file.metadata_sha256}
            )
        else:
            core = False
        # Never the key "dist-info-metadata": pip versions that read it crash on some values.
        entry: dict[str, Any] = {
            "filename": file.filename,
            "url": FILE_URL_BASE + file.path,
            "hashes": {} if file.sha256 is None else {"sha256": file.sha256},
            "requires-python": file.requires_python,
            "size": file.size,
            "upload-time": file.upload_time,
            "yanked": file.yanked,
            "core-metadata": core,
        }
        if provenance is not None:
            entry["provenance"] = provenance.get(file.filename)
        append(entry)
    page: dict[str, Any] = {
        "meta": {"api-version": extras.api_version, "_last-serial": serial},
        "name": name,
        "files": entries,
        "versions": versions,
    }
    if extras.status is not None:
        status: dict[str, str] = {"status": extras.status}
        if extras.status_reason:
            status["reason"] = extras.status_reason
        page["project-status"] = status
    return orjson.dumps(page)


def render_project(
    doc_or_body: dict[str, Any] | bytes, extras: SimpleExtras | None = None
) -> RenderedProject:
    """Both simple pages of one project from its PyPI JSON document (or the raw body), with
    what the upstream's PEP 691 page added (``extras``, when it was read)."""
    extras = extras or SimpleExtras()
    if isinstance(doc_or_body, dict):
        doc = doc_or_body
        _check_shape(doc)
    else:
        doc = parse_pypi_json(doc_or_body)
    name = normalize(doc["info"]["name"])
    serial: int = doc["last_serial"]
    # PEP 792: an index must offer no file of a quarantined project.
    files = [] if extras.quarantined else index_files(doc)
    versions = sorted_versions(doc["releases"])
    return RenderedProject(
        name=name,
        serial=serial,
        html=_html_page(name, serial, files, extras),
        json=_json_page(name, serial, files, versions, extras),
        files=tuple(files),
        quarantined=extras.quarantined,
    )


# -- root pages ----------------------------------------------------------------------------


def render_root_html(names: Iterable[str]) -> bytes:
    """PEP 503 root page: one relative link per project (names already normalised)."""
    head = (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
    )
    links = "".join([f'<a href="{n}/">{n}</a>\n' for n in map(escape, names)])
    return (head + links + "</body>\n</html>\n").encode()


def render_root_json(projects: Iterable[tuple[str, int]], global_serial: int) -> bytes:
    """PEP 691 root page with each project's ``_last-serial`` (lets other mirrors sync from us)."""
    page = {
        "meta": {"api-version": API_VERSION, "_last-serial": global_serial},
        "projects": [{"name": name, "_last-serial": serial} for name, serial in projects],
    }
    return orjson.dumps(page)
