"""The ``mix`` test: a realistic mix of request kinds, derived from the week of PyPI downloads
in ``../shared/trace/trace-7d.jsonl.xz`` and replayed by wrk from a pre-generated list.

From the first ``lines`` requests of the trace:

- the ``local_files`` most requested files become real files of their real sizes (capped at
  ``cap``): the ``tier0_files`` most requested in tier 0, the others in tier 1, each wheel with a
  ``.metadata`` file beside it; every other file is a miss (302 to the upstream);
- ``downloads`` of those requests, taken evenly through them (so the trace's order, clients and
  popularity shifts are kept), become the replayed downloads, each with what an installer sends
  around it (see the constants below): a simple page request of its project (half of them
  revalidations), sometimes a ``.metadata`` request, rarely a Range read;
- the pages exist for every project of the list: PyPI's real pages for the projects in
  ``../shared/pypi-corpus``, generated ones of the same shape for the others.

Requests carry the trace's User-Agent and client address (in X-Forwarded-For, which both servers
trust from 127.0.0.1), so our server votes as it would for those clients (bandersnatch does not).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import lzma
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from serve_bench.tools import REPO_ROOT
from serve_bench.tree import RANGE_SUFFIX, SERIAL, Layout, corpus_pages, write_if_changed

TRACE = REPO_ROOT.parent / "shared" / "trace" / "trace-7d.jsonl.xz"

# Assumptions (the trace has file downloads only; benchmarks/README.md explains them).
PAGE_PER_DOWNLOAD = 1.0  # simple page requests per download (none for bandersnatch)
REVALIDATED = 0.5  # share of those page requests that revalidate (If-None-Match → 304)
METADATA_PER_WHEEL = 0.5  # .metadata requests per download of a local wheel
RANGE_PER_UV_WHEEL = 0.02  # Range reads (bytes=-16384) per uv download of a local wheel
LINKS_PER_TRACE_FILE = 12  # a generated page lists this many files per file the trace asks
MAX_LINKS = 5000
METADATA_SIZES = (1633, 1795, 2527, 3310, 4806, 5857, 7207, 8754, 13235, 17158)  # corpus's
JSON_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
HTML_ACCEPT = "text/html"
KINDS = ("page", "page-304", "metadata", "range", "tier0", "tier1", "miss-302")
_SDIST = re.compile(r"^(.+?)-(\d[^-]*?)\.(tar\.gz|tar\.bz2|tgz|zip)$")


@dataclass(frozen=True)
class MixRequest:
    kind: str
    path: str  # URL path
    headers: tuple[tuple[str, str], ...]
    status: int  # expected
    size: int = 0  # body bytes of a 200 or 206
    revalidate: bool = False  # If-None-Match with the server's current ETag of (path, Accept)

    @property
    def accept(self) -> str:
        return dict(self.headers).get("Accept", "")


@dataclass
class Mix:
    requests: list[MixRequest]
    summary: list[str] = field(default_factory=list)

    def etag_keys(self) -> set[tuple[str, str]]:
        return {(r.path, r.accept) for r in self.requests if r.revalidate}

    def samples(self, per_kind: int = 3) -> list[MixRequest]:
        """The first few requests of each kind, for the check before measuring."""
        seen: Counter[str] = Counter()
        chosen = []
        for request in self.requests:
            if seen[request.kind] < per_kind:
                seen[request.kind] += 1
                chosen.append(request)
        return chosen

    def write(self, target: Path, host: str, etags: dict[tuple[str, str], str]) -> None:
        """The raw requests for one server, back to back (the Lua script splits them)."""
        parts = []
        for request in self.requests:
            lines = [f"GET {request.path} HTTP/1.1", f"Host: {host}"]
            lines += [f"{name}: {value}" for name, value in request.headers]
            if request.revalidate:
                lines.append(f"If-None-Match: {etags[(request.path, request.accept)]}")
            parts.append("\r\n".join(lines) + "\r\n\r\n")
        target.write_text("".join(parts))


def lua_script(requests_file: Path, threads: int) -> str:
    """wrk's request() hands out the pre-generated requests in order, each thread starting
    at its own place in the list and wrapping around."""
    return f"""\
local requests = {{}}
local position = 0
local thread_count = 0

function setup(thread)
  thread:set("thread_number", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local handle = assert(io.open("{requests_file}", "rb"))
  local data = handle:read("*a")
  handle:close()
  for request in string.gmatch(data, "(.-\\r\\n\\r\\n)") do
    requests[#requests + 1] = request
  end
  position = math.floor(#requests * (thread_number or 0) / {threads})
end

function request()
  position = position + 1
  if position > #requests then
    position = 1
  end
  return requests[position]
end
"""


@dataclass(frozen=True)
class _Download:
    ip: str
    path: str  # file path (after /packages/)
    size: int
    ua: str


def read_trace(lines: int) -> list[_Download]:
    rows = []
    with lzma.open(TRACE, "rt") as trace:
        for line in itertools.islice(trace, lines):
            row = json.loads(line)
            rows.append(_Download(row["ip"], row["path"], row["size"], row["ua"]))
    return rows


def project_of(filename: str) -> str:
    match = _SDIST.match(filename)
    name = match.group(1) if match else filename.split("-", 1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def version_of(filename: str) -> str:
    match = _SDIST.match(filename)
    if match:
        return match.group(2)
    parts = filename.split("-")
    return parts[1] if len(parts) > 1 else "0"


def installer_of(user_agent: str) -> str:
    return user_agent.split("/", 1)[0].lower()


def build_mix(
    layout: Layout,
    prefix: str,
    *,
    lines: int,
    downloads: int,
    local_files: int,
    tier0_files: int,
    cap: int,
    kept: set[Path],
    seed: int = 1,
) -> tuple[Mix, list[Path]]:
    """Write the mix's files and pages (idempotent) and generate its request list; also
    returns the local files, so the caller can read them into the page cache."""
    rows = read_trace(lines)
    popularity = Counter(row.path for row in rows)
    sizes = {row.path: row.size for row in rows}
    ranked = [path for path, _ in popularity.most_common(local_files)]
    tier_of = {path: (0 if rank < tier0_files else 1) for rank, path in enumerate(ranked)}
    step = max(1, len(rows) // downloads)
    sample = rows[::step][:downloads]

    seen_files: dict[str, set[str]] = defaultdict(set)  # project → file paths in the trace
    for row in rows:
        seen_files[project_of(row.path.rsplit("/", 1)[1])].add(row.path)
    page_projects = sorted(
        {project_of(r.path.rsplit("/", 1)[1]) for r in sample if not _is_bot(r.ua)}
    )
    page_sizes = _write_pages(layout.repo, page_projects, seen_files)
    local = _write_files(layout, tier_of, sizes, cap, kept)

    rng = random.Random(seed)
    requests: list[MixRequest] = []
    for row in sample:
        filename = row.path.rsplit("/", 1)[1]
        installer = installer_of(row.ua)
        bot = _is_bot(row.ua)
        base = (("User-Agent", row.ua), ("X-Forwarded-For", row.ip))
        if not bot and rng.random() < PAGE_PER_DOWNLOAD:
            project = project_of(filename)
            accept = HTML_ACCEPT if installer == "poetry" else JSON_ACCEPT
            url = f"{prefix}/simple/{project}/"
            headers = (*base, ("Accept", accept))
            if rng.random() < REVALIDATED:
                requests.append(MixRequest("page-304", url, headers, 304, revalidate=True))
            else:
                size = page_sizes[project][accept == JSON_ACCEPT]
                requests.append(MixRequest("page", url, headers, 200, size))
        tier = tier_of.get(row.path)
        size = min(row.size, cap)
        file_url = f"{prefix}/packages/{row.path}"
        if tier is not None and filename.endswith(".whl") and not bot:
            if rng.random() < METADATA_PER_WHEEL:
                meta = local[row.path + ".metadata"][1]
                requests.append(MixRequest("metadata", file_url + ".metadata", base, 200, meta))
            if installer == "uv" and rng.random() < RANGE_PER_UV_WHEEL:
                suffix = (("Range", f"bytes=-{RANGE_SUFFIX}"),)
                requests.append(
                    MixRequest("range", file_url, base + suffix, 206, min(RANGE_SUFFIX, size))
                )
        if tier is None:
            requests.append(MixRequest("miss-302", file_url, base, 302))
        else:
            requests.append(MixRequest(f"tier{tier}", file_url, base, 200, size))

    mix = Mix(requests)
    mix.summary = _summary(rows, sample, requests, local, tier_of, page_projects, cap)
    return mix, [path for path, _ in local.values()]


def _is_bot(user_agent: str) -> bool:
    return "bandersnatch" in user_agent.lower()


def _write_pages(
    repo: Path, projects: list[str], seen_files: dict[str, set[str]]
) -> dict[str, tuple[int, int]]:
    """Both pages of each project (real ones when recorded, else generated); returns the
    (HTML, JSON) sizes. Every page gets a fresh mtime: inside page_ttl, never fetched."""
    sizes = {}
    for project in projects:
        pages = corpus_pages(project) or _generated_pages(project, sorted(seen_files[project]))
        folder = repo / "simple" / project
        for name, body in zip(("index.html", "index.v1.json"), pages, strict=True):
            write_if_changed(folder / name, body)
            os.utime(folder / name)
        sizes[project] = (len(pages[0]), len(pages[1]))
    return sizes


def _generated_pages(project: str, paths: list[str]) -> tuple[bytes, bytes]:
    """Pages in our renderer's shape listing the trace's files of the project and, for older
    releases, made-up files like them (LINKS_PER_TRACE_FILE per trace file)."""
    links = []
    for release in range(LINKS_PER_TRACE_FILE):
        for path in paths:
            filename = path.rsplit("/", 1)[1]
            if release:
                version = version_of(filename)
                filename = filename.replace(f"-{version}", f"-{version}.post{release}", 1)
                digest = hashlib.blake2b(filename.encode(), digest_size=32).hexdigest()
                path = f"{digest[:2]}/{digest[2:4]}/{digest[4:]}/{filename}"
            links.append((path, filename))
    links = links[:MAX_LINKS]
    html = [
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.1">\n'
        f"<title>Links for {project}</title>\n</head>\n<body>\n<h1>Links for {project}</h1>\n"
    ]
    files = []
    versions = set()
    for path, filename in links:
        sha = hashlib.sha256(filename.encode()).hexdigest()
        wheel = filename.endswith(".whl")
        meta = hashlib.sha256(filename.encode() + b".metadata").hexdigest() if wheel else None
        attrs = f'<a href="../../packages/{path}#sha256={sha}" data-requires-python="&gt;=3.9"'
        if meta:
            attrs += f' data-core-metadata="sha256={meta}" data-dist-info-metadata="sha256={meta}"'
        html.append(f"{attrs}>{filename}</a><br/>\n")
        files.append(
            {
                "filename": filename,
                "url": f"../../packages/{path}",
                "hashes": {"sha256": sha},
                "requires-python": ">=3.9",
                "size": 100_000 + len(filename),
                "upload-time": "2025-06-01T12:00:00.000000Z",
                "yanked": False,
                "core-metadata": {"sha256": meta} if meta else False,
            }
        )
        versions.add(version_of(filename))
    html.append(f"</body>\n</html>\n<!--SERIAL {SERIAL}-->\n")
    document = {
        "meta": {"api-version": "1.1", "_last-serial": SERIAL},
        "name": project,
        "files": files,
        "versions": sorted(versions),
    }
    return "".join(html).encode(), json.dumps(document, separators=(",", ":")).encode()


def _write_files(
    layout: Layout, tier_of: dict[str, int], sizes: dict[str, int], cap: int, kept: set[Path]
) -> dict[str, tuple[Path, int]]:
    """Each local file (and each local wheel's .metadata) in its tier: file path → (where,
    size). Files of earlier runs that are not wanted now (another tier, other parameters) are
    removed, except the single-URL tests' files (``kept``)."""
    block = random.Random(0).randbytes(cap)
    wanted: dict[str, tuple[Path, int]] = {}
    for path, tier in tier_of.items():
        folder = layout.tiers[tier]
        wanted[path] = (folder / path, min(sizes[path], cap))
        if path.endswith(".whl"):
            digest = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=4).digest(), "big")
            meta_size = METADATA_SIZES[digest % len(METADATA_SIZES)]
            wanted[path + ".metadata"] = (folder / (path + ".metadata"), meta_size)
    keep = kept | {where for where, _ in wanted.values()}
    for tier in layout.tiers:
        for folder, _dirs, names in os.walk(tier):
            for name in names:
                found = Path(folder) / name
                if found not in keep:
                    found.unlink()
    for path, (where, size) in wanted.items():
        if where in kept:  # a single-URL test's file at the same path: it stays as it is
            wanted[path] = (where, where.stat().st_size)
            continue
        try:
            if where.stat().st_size == size:
                continue
        except FileNotFoundError:
            pass
        body = block[:size]
        if path.endswith(".metadata"):
            body = _metadata_text(path, size)
        write_if_changed(where, body)
    return wanted


def _metadata_text(path: str, size: int) -> bytes:
    filename = path.rsplit("/", 1)[1].removesuffix(".metadata")
    head = (
        f"Metadata-Version: 2.1\nName: {project_of(filename)}\n"
        f"Version: {version_of(filename)}\nSummary: generated by benchmarks/serve\n"
        "Requires-Python: >=3.9\n\n"
    ).encode()
    return (head + b"x" * size)[:size]


def _summary(
    rows: list[_Download],
    sample: list[_Download],
    requests: list[MixRequest],
    local: dict[str, tuple[Path, int]],
    tier_of: dict[str, int],
    page_projects: list[str],
    cap: int,
) -> list[str]:
    installers = Counter(installer_of(row.ua) for row in rows)
    total = len(rows)
    agents = ", ".join(f"{name} {100 * n / total:.1f} %" for name, n in installers.most_common())
    hits = [sum(tier_of.get(r.path) == tier for r in rows) / total for tier in (0, 1)]
    kinds = Counter(request.kind for request in requests)
    shares = ", ".join(f"{kind} {100 * kinds[kind] / len(requests):.1f} %" for kind in KINDS)
    disk = sum(size for _, size in local.values())
    real = sum(corpus_pages(p) is not None for p in page_projects)
    return [
        f"trace: first {total:,} downloads, {len(popularity_set(rows)):,} distinct files; "
        f"clients: {agents}",
        f"local: the {len(tier_of):,} most requested files (capped at {cap / 2**20:g} MiB, "
        f"{disk / 1e9:.2f} GB with their .metadata) serve {100 * (hits[0] + hits[1]):.1f} % "
        f"of the trace's downloads: tier 0 {100 * hits[0]:.1f} %, tier 1 {100 * hits[1]:.1f} %",
        f"list: {len(requests):,} requests around {len(sample):,} downloads, "
        f"{len(page_projects):,} projects' pages ({real} real, the rest generated)",
        f"kinds: {shares}",
    ]


def popularity_set(rows: list[_Download]) -> set[str]:
    return {row.path for row in rows}
