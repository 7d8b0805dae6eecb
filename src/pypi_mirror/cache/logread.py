"""Read file downloads from request logs, for ``pypi-mirror simulate``.

Three formats, recognised by the first line of each file: this mirror's access log as
``mirror-json`` or Apache ``combined`` (server/accesslog.py), and the JSON-lines trace format
(``{"t", "ip", "path", "size", "ua"}``). Plain, ``.xz`` or ``.gz`` files are streamed.
Only a GET of ``{prefix}/packages/<valid path>`` answered 200, 206 or 302 is a download.
"""

from __future__ import annotations

import gzip
import lzma
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, NamedTuple

import orjson

from pypi_mirror.names import is_valid_file_path

DOWNLOAD_STATUSES = frozenset((200, 206, 302))

_COMBINED_RE = re.compile(
    rb'^(\S+) \S+ \S+ \[([^\]]+)\] "(\S+) (\S+)[^"\\]*(?:\\.[^"\\]*)*" (\d{3}) (\S+) '
    rb'"(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"'
)


class Download(NamedTuple):
    time: int  # unix seconds
    ip: str
    path: str  # after /packages/
    size: int | None  # the file's size when the line tells it
    user_agent: str


class _Clock:
    """Text stamp -> unix seconds, remembering the last one (a log has runs of equal stamps)."""

    def __init__(self, parse: Callable[[str], datetime]) -> None:
        self._parse = parse
        self._text = ""
        self._value = 0

    def __call__(self, text: str) -> int:
        if text != self._text:
            self._value = int(self._parse(text).timestamp())
            self._text = text
        return self._value


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def open_log(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(lines, raw): the decompressed stream and the file under it (its position is progress)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if path.suffix == ".xz":
        return lzma.open(raw), raw
    if path.suffix == ".gz":
        return gzip.open(raw), raw
    return raw, raw


def detect_format(first_line: bytes) -> str:
    """ "trace", "mirror-json" or "combined"."""
    text = first_line.lstrip()
    if text.startswith(b"{"):
        return "trace" if b'"t"' in text else "mirror-json"
    return "combined"


def file_path(url_path: str, packages: str) -> str | None:
    """The file path of a request path ``{prefix}/packages/...``; None for anything else."""
    if not url_path.startswith(packages):
        return None
    path = url_path[len(packages) :].split("?", 1)[0]
    return path if is_valid_file_path(path) else None


def read_downloads(
    lines: Iterator[bytes], prefix: str, *, bad: list[int] | None = None
) -> Iterator[Download]:
    """The downloads in one log's lines (format from the first non-empty line).

    ``bad`` (one counter) counts lines that could not be read at all."""
    bad = bad if bad is not None else [0]
    packages = f"{prefix}/packages/"
    first = b""
    for first in lines:
        if first.strip():
            break
    else:
        return
    kind = detect_format(first)
    reader = {"trace": _trace, "mirror-json": _mirror_json, "combined": _combined}[kind]
    yield from reader(_chain(first, lines), packages, bad)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _trace(lines: Iterator[bytes], _packages: str, bad: list[int]) -> Iterator[Download]:
    valid: dict[str, bool] = {}  # a trace names each file many times: check each once
    for line in lines:
        try:
            item = orjson.loads(line)
            path = item["path"]
            ok = valid.get(path)
            if ok is None:
                ok = valid[path] = is_valid_file_path(path)
            if ok:
                yield Download(int(item["t"]), item["ip"], path, item.get("size"), item["ua"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            bad[0] += bool(line.strip())


def _mirror_json(lines: Iterator[bytes], packages: str, bad: list[int]) -> Iterator[Download]:
    clock = _Clock(_utc)
    for line in lines:
        try:
            item = orjson.loads(line)
            if item["method"] != "GET" or item["status"] not in DOWNLOAD_STATUSES:
                continue
            path = file_path(item["path"], packages)
            if path is None:
                continue
            # Only a 200 sent the whole file (a 206 sent part of it, a 302 none).
            size = item.get("bytes") if item["status"] == 200 else None
            yield Download(
                clock(item["time"]), item["client_ip"], path, size or None, item["user_agent"]
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            bad[0] += bool(line.strip())


def _combined(lines: Iterator[bytes], packages: str, bad: list[int]) -> Iterator[Download]:
    clock = _Clock(lambda text: datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z"))
    for line in lines:
        match = _COMBINED_RE.match(line)
        if match is None:
            bad[0] += bool(line.strip())
            continue
        ip, stamp, method, target, status, size, agent = match.groups()
        if method != b"GET" or int(status) not in DOWNLOAD_STATUSES:
            continue
        path = file_path(target.decode("utf-8", "replace"), packages)
        if path is None:
            continue
        try:
            moment = clock(stamp.decode())
        except ValueError:
            bad[0] += 1
            continue
        whole = int(size) if status == b"200" and size.isdigit() else None
        user_agent = agent.decode("utf-8", "replace").replace('\\"', '"').replace("\\\\", "\\")
        yield Download(moment, ip.decode(), path, whole or None, user_agent)
