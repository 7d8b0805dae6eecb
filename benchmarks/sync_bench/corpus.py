"""JSON API documents sized like PyPI's, built from real ones.

Real `/pypi/<p>/json` documents (../shared/pypi-corpus) are cut to their latest releases until
they list a number of files drawn from a long-tailed distribution: median 5 files, mean about
20, one project in a hundred above ~240. That is PyPI's shape (about 600,000 projects, 12
million files: 20 a project on average, most projects a handful, a few thousands). Each variant
is stored as a template with the project name and the serial left as holes; the upstream fills
them per request.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any

import orjson

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "pypi-corpus" / "projects"
NAME_HOLE = "@@BENCH-NAME@@"
SERIAL_HOLE = 918273645546372819


def _real_documents() -> list[dict[str, Any]]:
    if not CORPUS.is_dir():
        return []
    return [orjson.loads(p.read_bytes()) for p in sorted(CORPUS.glob("*/pypi.json"))]


def _synthetic_document(rng: random.Random, releases: int) -> dict[str, Any]:
    """A document of the real shape when the corpus is not there."""
    doc: dict[str, Any] = {
        "info": {"name": "synthetic", "summary": "x" * 80, "description": "y" * 3000},
        "last_serial": 1,
        "releases": {},
        "urls": [],
        "vulnerabilities": [],
    }
    for r in range(releases):
        files = []
        for kind in ("py3-none-any.whl", "tar.gz"):
            digest = f"{rng.getrandbits(256):064x}"
            separator = "." if kind.endswith("gz") else "-"
            filename = f"synthetic-{r}.0{separator}{kind}"
            files.append(
                {
                    "filename": filename,
                    "url": f"https://files.example/packages/{digest[:2]}/{digest[2:4]}/"
                    f"{digest[4:]}/{filename}",
                    "digests": {"sha256": digest, "md5": digest[:32]},
                    "size": rng.randint(1000, 10**6),
                    "requires_python": ">=3.8",
                    "packagetype": "bdist_wheel",
                    "python_version": "py3",
                    "upload_time_iso_8601": "2024-01-01T00:00:00.000000Z",
                    "yanked": False,
                    "yanked_reason": None,
                    "core-metadata": False,
                }
            )
        doc["releases"][f"{r}.0"] = files
    return doc


def files_drawn(rng: random.Random) -> int:
    # Log-normal with median 5 and mean 20: sigma = sqrt(2 ln(20 / 5)).
    return max(1, round(math.exp(rng.gauss(math.log(5), math.sqrt(2 * math.log(4))))))


def build_templates(count: int, seed: int = 1) -> list[tuple[bytes, bytes, bytes]]:
    """``count`` templates, each (before name, between name and serial, after serial)."""
    rng = random.Random(seed)
    real = _real_documents()
    templates = []
    for _ in range(count):
        wanted = files_drawn(rng)
        if real:
            source = rng.choice(real)
            keep: list[str] = []
            files = 0
            for version in reversed(list(source["releases"])):
                if files >= wanted:
                    break
                keep.insert(0, version)
                files += len(source["releases"][version])
            doc = dict(source)
            doc["releases"] = {v: source["releases"][v] for v in keep}
            doc["urls"] = doc["releases"][keep[-1]] if keep else []
            doc["info"] = dict(source["info"])
        else:
            doc = _synthetic_document(rng, max(1, wanted // 2))
        doc["info"]["name"] = NAME_HOLE
        doc["last_serial"] = SERIAL_HOLE
        body = orjson.dumps(doc)
        head, rest = body.split(NAME_HOLE.encode(), 1)
        middle, tail = rest.split(str(SERIAL_HOLE).encode(), 1)
        templates.append((head, middle, tail))
    return templates


def body_sizes(templates: list[tuple[bytes, bytes, bytes]], picks: list[int]) -> dict[str, float]:
    sizes = sorted(sum(map(len, templates[i])) + 30 for i in picks)
    return {
        "median": statistics.median(sizes),
        "mean": statistics.fmean(sizes),
        "p99": sizes[int(len(sizes) * 0.99) - 1],
        "max": sizes[-1],
        "total": sum(sizes),
    }


def uses_real_corpus() -> bool:
    return CORPUS.is_dir()
