"""The files both servers serve, and the single-URL tests (``Target``) that request them.

Layout under ``benchmarks/.work/``:

- ``repo/``: our ``repo_path`` and nginx's document root. ``simple/`` holds the pages (the
  real ~12 KB page of six, fresh; the same bytes as ``six-synced``, old and owned by sync;
  PyPI's real root index, 40 MB, with its gzip copy), ``tier0/`` and ``tier1/`` the two cache
  tiers (PyPI's ``ab/cd/<60 hex>/<filename>`` layout, the hash being blake2b-256 of the bytes).
- ``upstream/``: what the local upstream (a second nginx) serves at ``/packages/…``: files in
  no tier, for the proxy tests.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from serve_bench.tools import REPO_ROOT

CORPUS = REPO_ROOT.parent / "shared" / "pypi-corpus"
PROJECT = "six"
STALE_PROJECT = "six-synced"  # the page of `page-stale`: older than page_ttl, owned by sync
SERIAL = 31234567
TIERS = ("tier0", "tier1")
STALE_AGE = 30 * 86400.0  # seconds; our config's page_ttl is 1 day
RANGE_SUFFIX = 16384  # `Range: bytes=-16384`, as uv reads a wheel's central directory
ACCEPT_HTML = "text/html"


@dataclass(frozen=True)
class Goal:
    """``rate``: ours / nginx throughput (req/s or MB/s) at least ``limit``; ``cpu``: ours /
    nginx server CPU per request (or per GiB) at most ``limit``."""

    metric: str
    limit: float

    def describe(self) -> str:
        if self.metric == "rate":
            return f"≥ {self.limit:g}×"
        return f"CPU ≤ {self.limit:g}×"

    def met(self, rate: float | None, cpu: float | None) -> bool | None:
        if self.metric == "rate":
            return None if rate is None else rate >= self.limit
        return None if cpu is None else cpu <= self.limit


HALF = Goal("rate", 0.5)


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    path: str  # URL path, the same on both servers
    unit: str  # "req/s" or "MB/s"
    goals: tuple[Goal, ...]
    headers: tuple[tuple[str, str], ...] = ()  # besides the User-Agent
    status: int = 200
    body: bytes | None = None  # what a 200 or 206 must carry, exactly
    location: str | None = None  # where a 302 must point
    instance: str = "main"  # "main" (fallback 302) or "proxy" (fallback proxy)
    revalidate: bool = False  # send If-None-Match with the server's current ETag of `path`

    @property
    def min_bytes(self) -> int:
        """Bytes wrk must count per response at least (it counts heads too)."""
        return len(self.body) if self.body is not None else 0


@dataclass(frozen=True)
class Layout:
    work: Path

    @property
    def repo(self) -> Path:
        return self.work / "repo"

    @property
    def tiers(self) -> tuple[Path, ...]:
        return tuple(self.repo / name for name in TIERS)

    @property
    def upstream(self) -> Path:
        return self.work / "upstream"


def corpus_pages(name: str) -> tuple[bytes, bytes] | None:
    """PyPI's real HTML and JSON pages of ``name`` from ../shared/pypi-corpus, if recorded.

    Our renderer ends an HTML page with a serial trailer; the copy gets one too, so the
    server's X-PyPI-Last-Serial path is part of what is measured.
    """
    folder = CORPUS / "projects" / name
    try:
        html = (folder / "simple.html").read_bytes()
        json_page = (folder / "simple.v1.json").read_bytes()
    except OSError:
        return None
    return html.rstrip(b"\n") + f"\n<!--SERIAL {SERIAL}-->\n".encode(), json_page


def _six_page() -> bytes:
    """The real page of six (12.5 KB) or, without ../shared, one of the same shape."""
    pages = corpus_pages(PROJECT)
    if pages is not None:
        return pages[0]
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
    )
    return page.encode() + f"<!--SERIAL {SERIAL}-->\n".encode()


def _root_index() -> tuple[bytes, bytes]:
    """PyPI's real root index (927,088 projects, 40 MB; 7.4 MB gzipped) and its gzip copy, or
    one of the same size made up of generated names."""
    recorded = CORPUS / "root-simple.html.gz"
    if recorded.exists():
        packed = recorded.read_bytes()
        return gzip.decompress(packed), packed
    names = "".join(f'<a href="project-{i}/">project-{i}</a>\n' for i in range(927_088))
    html = f"<!DOCTYPE html><html><body>\n{names}</body></html>\n".encode()
    return html, gzip.compress(html, compresslevel=6, mtime=0)


def _metadata_file() -> tuple[str, bytes]:
    """A real PEP 658 ``.metadata`` file (six 1.16.0's, 1.8 KB) and its file path."""
    folder = CORPUS / "files" / "packages"
    for found in sorted(folder.glob("*/*/*/six-1.16.0-py2.py3-none-any.whl.metadata")):
        return str(found.relative_to(folder)), found.read_bytes()
    body = (
        "Metadata-Version: 2.1\nName: benchmeta\nVersion: 1.0\nSummary: benchmark\n"
        + "Classifier: Programming Language :: Python :: 3\n" * 30
    ).encode()
    return pypi_path(body, "benchmeta-1.0-py3-none-any.whl") + ".metadata", body


def file_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def pypi_path(body: bytes, filename: str) -> str:
    digest = hashlib.blake2b(body, digest_size=32).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"


def write_if_changed(target: Path, body: bytes) -> None:
    try:
        if target.stat().st_size == len(body) and target.read_bytes() == body:
            return
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".tmp-{target.name}")
    temp.write_bytes(body)
    os.replace(temp, target)


def build_tree(layout: Layout, prefix: str, upstream_url: str) -> tuple[list[Target], set[Path]]:
    """Write the files of the single-URL tests (idempotent); returns the tests, in table order,
    and the files written into the tiers (which the mix must leave alone)."""
    repo = layout.repo
    for tier in layout.tiers:
        tier.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(repo / "packages", ignore_errors=True)  # the single-tier layout of old runs
    html = {"Accept": ACCEPT_HTML}
    kept: set[Path] = set()

    page = _six_page()
    page_file = repo / "simple" / PROJECT / "index.html"
    write_if_changed(page_file, page)
    # A fresh mtime keeps the page inside the server's on-demand TTL: it never asks upstream.
    os.utime(page_file)
    stale_file = repo / "simple" / STALE_PROJECT / "index.html"
    write_if_changed(stale_file, page)
    old = time.time() - STALE_AGE
    os.utime(stale_file, (old, old))
    root_html, root_gz = _root_index()
    write_if_changed(repo / "simple" / "index.html", root_html)
    write_if_changed(repo / "simple" / "index.html.gz", root_gz)

    page_url = f"{prefix}/simple/{PROJECT}/"
    targets = [
        Target("page", "12 KB simple page", page_url, "req/s", (HALF,), _h(html), body=page),
        Target(
            "page-304",
            "page, If-None-Match → 304",
            page_url,
            "req/s",
            (HALF,),
            _h(html),
            status=304,
            revalidate=True,
        ),
        Target(
            "page-gzip",
            "root index, gzip (7.4 MB)",
            f"{prefix}/simple/",
            "MB/s",
            (HALF,),
            _h({**html, "Accept-Encoding": "gzip"}),
            body=root_gz,
        ),
        Target(
            "page-stale",
            "page older than TTL, synced",
            f"{prefix}/simple/{STALE_PROJECT}/",
            "req/s",
            (HALF,),
            _h(html),
            body=page,
        ),
    ]

    metadata_path, metadata = _metadata_file()
    _place(layout.tiers[0], metadata_path, metadata, kept)
    targets.append(
        Target(
            "metadata",
            ".whl.metadata (tier 0)",
            f"{prefix}/packages/{metadata_path}",
            "req/s",
            (HALF,),
            body=metadata,
        )
    )

    small = 100 * 1024
    large = 5 * 1024 * 1024
    files = {}
    for key, size, name, where in (
        ("tier0-100k", small, "benchsmall-1.0-py3-none-any.whl", layout.tiers[0]),
        ("tier1-100k", small, "benchsmallcold-1.0-py3-none-any.whl", layout.tiers[1]),
        ("5m", large, "benchlarge-1.0-py3-none-any.whl", layout.tiers[0]),
        ("5m-tier1", large, "benchlargecold-1.0-py3-none-any.whl", layout.tiers[1]),
        ("proxy-100k", small, "benchproxy-1.0-py3-none-any.whl", layout.upstream / "packages"),
        ("proxy-5m", large, "benchproxylarge-1.0-py3-none-any.whl", layout.upstream / "packages"),
    ):
        body = file_bytes(size, seed=name)
        path = pypi_path(body, name)
        _place(where, path, body, kept)
        files[key] = (path, body)

    def file_target(key: str, label: str, unit: str, goals: tuple[Goal, ...], **extra) -> Target:
        path, body = files[key]
        return Target(key, label, f"{prefix}/packages/{path}", unit, goals, body=body, **extra)

    cpu_5m = Goal("cpu", 1.15)
    targets += [
        file_target("tier0-100k", "100 KB file, tier 0", "req/s", (HALF,)),
        file_target("tier1-100k", "100 KB file, tier 1", "req/s", (HALF,)),
    ]
    range_path, range_body = files["tier0-100k"]
    targets.append(
        Target(
            "range",
            "Range bytes=-16384 → 206",
            f"{prefix}/packages/{range_path}",
            "req/s",
            (HALF,),
            (("Range", f"bytes=-{RANGE_SUFFIX}"),),
            status=206,
            body=range_body[-RANGE_SUFFIX:],
        )
    )
    missing = pypi_path(b"not on this mirror", "benchmissing-1.0-py3-none-any.whl")
    targets += [
        Target(
            "miss-302",
            "file in no tier → 302",
            f"{prefix}/packages/{missing}",
            "req/s",
            (HALF,),
            status=302,
            location=f"{upstream_url}/packages/{missing}",
        ),
        file_target("5m", "5 MB file, tier 0", "MB/s", (HALF, cpu_5m)),
        file_target("5m-tier1", "5 MB file, tier 1", "MB/s", (HALF, cpu_5m)),
        file_target("proxy-100k", "100 KB file, proxied", "req/s", (HALF,), instance="proxy"),
        file_target(
            "proxy-5m",
            "5 MB file, proxied",
            "MB/s",
            (HALF, Goal("cpu", 1.5)),
            instance="proxy",
        ),
    ]
    return targets, kept


def _h(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(headers.items())


def _place(folder: Path, path: str, body: bytes, kept: set[Path]) -> None:
    target = folder / path
    write_if_changed(target, body)
    kept.add(target)
