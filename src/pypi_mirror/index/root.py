"""The root index: ``simple/index.html`` and ``simple/index.v1.json`` (+ gzip copies),
listing every known project with its serial, written a slice at a time (bounded memory)
through a small staging folder (a killed run's leftovers are found without listing
every project)."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from pypi_mirror.db import Database
from pypi_mirror.index.render import render_root_html, render_root_json
from pypi_mirror.repo import Repo, temp_path_for

log = logging.getLogger(__name__)

GLOBAL_SERIAL_KEY = "global_serial"  # settings key: the serial the root index claims
ROOT_CHUNK = 50_000  # projects per rendered slice of the root index
GZIP_LEVEL = 6
STAGING_LEFTOVER_AGE = 600.0  # seconds: older temporary root pages belong to no live writer


def _slices(rows: Iterator[tuple[str, int]], size: int) -> Iterator[list[tuple[str, int]]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


class _StreamedFile:
    """A file written in pieces to a temporary name, with a gzip copy beside it; both renamed
    into place by ``commit`` (never half-visible). Compression runs in a helper thread: zlib
    releases the GIL, so it overlaps with rendering."""

    def __init__(
        self, target: Path, gz_target: Path, staging: Path, executor: ThreadPoolExecutor
    ) -> None:
        self.target = target
        self.gz_target = gz_target
        self.temp = temp_path_for(staging / target.name)
        self.gz_temp = temp_path_for(staging / gz_target.name)
        self.handle = open(self.temp, "wb")  # noqa: SIM115 - closed in commit/abort
        try:
            self.gz_handle = open(self.gz_temp, "wb")  # noqa: SIM115
        except BaseException:
            _discard(self.handle, self.temp)
            raise
        # mtime=0: the same index compresses to the same bytes.
        self.gz = gzip.GzipFile(
            filename="", mode="wb", fileobj=self.gz_handle, compresslevel=GZIP_LEVEL, mtime=0
        )
        self.executor = executor
        self.pending: Future[None] | None = None

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        if self.pending is not None:
            self.pending.result()
        self.pending = self.executor.submit(self.gz.write, data)

    def commit(self) -> None:
        if self.pending is not None:
            self.pending.result()
        self.gz.close()
        for handle, temp, target in (
            (self.gz_handle, self.gz_temp, self.gz_target),
            (self.handle, self.temp, self.target),
        ):
            handle.close()
            os.chmod(temp, 0o644)
            os.replace(temp, target)

    def abort(self) -> None:
        if self.pending is not None and not self.pending.cancel():
            # Already compressing into gz_handle: let it end (or fail) before closing it.
            with contextlib.suppress(Exception):
                self.pending.result()
        for handle, temp in ((self.gz_handle, self.gz_temp), (self.handle, self.temp)):
            _discard(handle, temp)


def _discard(handle: BinaryIO, temp: Path) -> None:
    """Close and remove a temporary file whatever happens: on a full disk, closing flushes
    the buffer and fails again, and the file must still go."""
    with contextlib.suppress(OSError):
        handle.close()
    temp.unlink(missing_ok=True)


def _framing(page: bytes, marker: bytes) -> tuple[bytes, bytes]:
    """Split an empty page at ``marker`` (where entries go) into its head and tail."""
    at = page.index(marker) + len(marker)
    return page[:at], page[at:]


def write_root_index(repo: Repo, db: Database, global_serial: int) -> None:
    """``simple/index.html`` and ``simple/index.v1.json`` (+ ``.gz`` copies) from the serials
    table, rendered by the one renderer a slice of projects at a time (bounded memory)."""
    html_head, html_tail = _framing(render_root_html([]), b"<body>\n")
    json_head, json_tail = _framing(render_root_json([], global_serial), b'"projects":[')
    staging = repo.root_staging_dir
    staging.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(staging)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="root-gzip") as executor:
        html = _StreamedFile(repo.root_html, repo.root_html_gz, staging, executor)
        try:
            json = _StreamedFile(repo.root_json, repo.root_json_gz, staging, executor)
        except BaseException:
            html.abort()
            raise
        try:
            html.write(html_head)
            json.write(json_head)
            first = True
            for chunk in _slices(db.iter_serials_sorted(), ROOT_CHUNK):
                html.write(_entries(render_root_html([n for n, _ in chunk]), html_head, html_tail))
                entries = _entries(render_root_json(chunk, global_serial), json_head, json_tail)
                json.write(entries if first else b"," + entries)
                first = False
            html.write(html_tail)
            json.write(json_tail)
            json.commit()
            html.commit()
        except BaseException:
            html.abort()
            json.abort()
            raise


def _clear_leftovers(staging: Path) -> None:
    """Remove what a killed run left half-written (up to 100 MB at PyPI's size). A file that
    is still young may belong to a writer running right now (`serve` at start-up)."""
    cutoff = time.time() - STAGING_LEFTOVER_AGE
    for entry in os.scandir(staging):
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass


def _entries(page: bytes, head: bytes, tail: bytes) -> bytes:
    """The entries of a rendered page, without the head and tail every page shares."""
    if not page.startswith(head) or not page.endswith(tail):
        raise RuntimeError("the root page renderer changed its framing")
    return page[len(head) : len(page) - len(tail)]
