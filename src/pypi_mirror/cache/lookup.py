"""The index we hold (``json/{name}``), read for the files the cache wants: which project a file
belongs to, its index entry, and the hash its bytes must have."""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Iterable

from pypi_mirror.cache.download import Digest
from pypi_mirror.index.render import IndexFile, RenderError
from pypi_mirror.index.store import load_index_files
from pypi_mirror.names import METADATA_SUFFIX, filename_of, project_names
from pypi_mirror.repo import Repo

log = logging.getLogger(__name__)

INDEX_PROJECTS_KEPT = 64


class IndexLookup:
    """Entries of the index we hold (``json/{name}``) for file paths, one project load each.

    Callers hand over many paths at once; they are grouped by project, so a project's JSON is
    read and parsed once per call, and a small LRU keeps the last few for the next call.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._projects: OrderedDict[str, dict[str, IndexFile]] = OrderedDict()

    def _project(self, name: str) -> dict[str, IndexFile]:
        files = self._projects.get(name)
        if files is not None:
            self._projects.move_to_end(name)
            return files
        try:
            listed = load_index_files(self.repo, name) or []
        except (RenderError, OSError) as error:
            log.warning("%s: stored JSON is unreadable (%s)", name, error)
            listed = []
        files = {f.path: f for f in listed}
        self._projects[name] = files
        if len(self._projects) > INDEX_PROJECTS_KEPT:
            self._projects.popitem(last=False)
        return files

    def find(self, paths: Iterable[str]) -> dict[str, IndexFile]:
        """The index entry of each distribution file path the index lists."""
        by_project: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
        for path in paths:
            names = project_names(filename_of(path))
            if names:
                by_project[names[0]].append((path, names))
        found: dict[str, IndexFile] = {}
        for name in sorted(by_project):
            files = self._project(name)
            for path, names in by_project[name]:
                entry = files.get(path)
                for other in names[1:]:
                    if entry is not None:
                        break
                    entry = self._project(other).get(path)
                if entry is not None:
                    found[path] = entry
        return found


def digest_for(path: str, entry: IndexFile | None) -> Digest | None:
    """What a file must hash to: the index's sha256 (or, for a ``.metadata`` file, the
    advertised hash of the metadata); else, for a distribution file, the blake2b-256 that
    PyPI's own path is made of. None when nothing can vouch for the bytes."""
    if path.endswith(METADATA_SUFFIX):
        if entry is not None and entry.metadata_sha256:
            return Digest("sha256", entry.metadata_sha256)
        return None
    if entry is not None and entry.sha256:
        return Digest("sha256", entry.sha256)
    return Digest("blake2b_256", path[0:2] + path[3:5] + path[6:66])


def distribution_path(path: str) -> str:
    return path.removesuffix(METADATA_SUFFIX)
