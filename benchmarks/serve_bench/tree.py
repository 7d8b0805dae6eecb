"""The files both servers serve: a real ~12 KB simple page, a 100 KB and a 5 MB file at valid
PyPI paths (``packages/ab/cd/<60 hex>/<filename>``, the hash being blake2b-256 of the bytes,
as on PyPI)."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

from serve_bench.tools import REPO_ROOT

REAL_PAGE = REPO_ROOT.parent / "shared" / "pypi-corpus" / "projects" / "six" / "simple.html"
PROJECT = "six"
SERIAL = 31234567


@dataclass(frozen=True)
class Target:
    key: str  # "page", "100k", "5m"
    label: str
    path: str  # URL path, the same on both servers
    body: bytes
    unit: str  # "req/s" or "MB/s"
    goal: float  # wanted ratio to nginx


def _page_bytes() -> bytes:
    """PyPI's real page for six (12.5 KB) when ../shared is there, else one of the same shape.

    Our renderer ends a page with a serial trailer; the copy gets one too, so the server's
    X-PyPI-Last-Serial path is part of what is measured.
    """
    if REAL_PAGE.exists():
        page = REAL_PAGE.read_bytes()
    else:
        rows = []
        for minor in range(30):
            for kind in ("tar.gz", "py2.py3-none-any.whl"):
                name = f"six-1.{minor}.0{'-' if kind.endswith('whl') else '.'}{kind}"
                digest = hashlib.sha256(name.encode()).hexdigest()
                path = hashlib.blake2b(name.encode(), digest_size=32).hexdigest()
                rows.append(
                    f'<a href="../../packages/{path[:2]}/{path[2:4]}/{path[4:]}/{name}'
                    f'#sha256={digest}">{name}</a><br/>\n'
                )
        page = (
            "<!DOCTYPE html>\n<html>\n<head><title>Links for six</title></head>\n<body>\n"
            "<h1>Links for six</h1>\n" + "".join(rows) + "</body>\n</html>\n"
        ).encode()
    return page.rstrip(b"\n") + f"\n<!--SERIAL {SERIAL}-->\n".encode()


def _file_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _pypi_path(body: bytes, filename: str) -> str:
    digest = hashlib.blake2b(body, digest_size=32).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"


def _write_if_changed(target: Path, body: bytes) -> None:
    if target.exists() and target.read_bytes() == body:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".tmp-{target.name}")
    temp.write_bytes(body)
    os.replace(temp, target)


def build_tree(repo: Path, prefix: str) -> list[Target]:
    """Write the files under ``repo`` (idempotent) and describe what to request."""
    page = _page_bytes()
    page_file = repo / "simple" / PROJECT / "index.html"
    _write_if_changed(page_file, page)
    # A fresh mtime keeps the page inside the server's on-demand TTL: it never asks upstream.
    os.utime(page_file)
    targets = [
        Target("page", "12 KB simple page", f"{prefix}/simple/{PROJECT}/", page, "req/s", 0.5)
    ]
    for key, label, size, name, unit, goal in (
        ("100k", "100 KB file", 100 * 1024, "benchsmall-1.0-py3-none-any.whl", "req/s", 0.5),
        ("5m", "5 MB file", 5 * 1024 * 1024, "benchlarge-1.0-py3-none-any.whl", "MB/s", 0.9),
    ):
        body = _file_bytes(size, seed=size)
        path = _pypi_path(body, name)
        _write_if_changed(repo / "packages" / path, body)
        targets.append(Target(key, label, f"{prefix}/packages/{path}", body, unit, goal))
    return targets
