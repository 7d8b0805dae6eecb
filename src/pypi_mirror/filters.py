"""``filters:``: projects the mirror denies outright, and files kept out of the cache only.

A denied project is treated as a quarantined one (PEP 792): its pages and files answer 404,
even cached ones; `sync` neither lists nor keeps it, and the cache plan drops its files.
``cache_exclude`` only keeps matching files out of the cache: pages still list them and a
download falls back to the upstream (302 or proxy) like any other miss.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Literal

from packaging.utils import (
    InvalidWheelFilename,
    parse_wheel_filename,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pypi_mirror.names import dist_filename_of, project_of

# A name pattern: project-name characters and fnmatch's wildcards.
_PATTERN_RE = re.compile(r"[A-Za-z0-9._\-*?\[\]!]+")
_TAG_PATTERN_RE = re.compile(r"[A-Za-z0-9._*?\[\]!]+")


def _normalize_pattern(pattern: str) -> str:
    # As names are (PEP 503), so "Foo_Bar*" matches the normalised "foo-bar-baz".
    return re.sub(r"[-_.]+", "-", pattern).lower()


class CacheExclude(BaseModel):
    """Files never cached. A wheel is excluded when every one of its platform tags matches
    ``platforms`` (or every python tag matches ``pythons``): one that also runs elsewhere
    stays."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    platforms: list[str] = Field(default_factory=list)  # e.g. win_*, macosx_*
    pythons: list[str] = Field(default_factory=list)  # e.g. cp27, py2
    types: list[Literal["sdist", "wheel"]] = Field(default_factory=list)

    @field_validator("platforms", "pythons")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for item in value:
            if not isinstance(item, str) or not _TAG_PATTERN_RE.fullmatch(item):
                raise ValueError(f'invalid tag pattern "{item}"')
        return [item.lower() for item in value]


class FiltersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    deny_projects: list[str] = Field(default_factory=list)
    cache_exclude: CacheExclude = Field(default_factory=CacheExclude)

    @field_validator("deny_projects")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for item in value:
            if not isinstance(item, str) or not _PATTERN_RE.fullmatch(item):
                raise ValueError(f'invalid project name pattern "{item}"')
        return [_normalize_pattern(item) for item in value]


class Filters:
    """The compiled ``filters:`` section. Answers are memoised: the same names recur."""

    def __init__(self, config: FiltersConfig) -> None:
        self.deny = tuple(config.deny_projects)
        self.exclude = config.cache_exclude
        self.denies = lru_cache(maxsize=65536)(self._denies)
        self.path_denied = lru_cache(maxsize=65536)(self._path_denied)

    def __bool__(self) -> bool:
        exclude = self.exclude
        return bool(self.deny or exclude.platforms or exclude.pythons or exclude.types)

    def _denies(self, name: str) -> bool:
        """Whether the normalised project ``name`` is denied."""
        return any(fnmatchcase(name, pattern) for pattern in self.deny)

    def _path_denied(self, path: str) -> bool:
        if not self.deny:
            return False
        project = project_of(dist_filename_of(path))
        return project is not None and self.denies(project)

    def cache_excluded(self, path: str) -> bool:
        """Whether ``cache_exclude`` keeps this file (or its metadata) out of the cache."""
        exclude = self.exclude
        if not (exclude.platforms or exclude.pythons or exclude.types):
            return False
        filename = dist_filename_of(path)
        if not filename.endswith(".whl"):
            return "sdist" in exclude.types
        if "wheel" in exclude.types:
            return True
        try:
            tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return False
        return _all_match({t.platform for t in tags}, exclude.platforms) or _all_match(
            {t.interpreter for t in tags}, exclude.pythons
        )

    def keeps_out_of_cache(self, path: str) -> bool:
        """Denied or excluded: the cache plan neither downloads nor keeps it."""
        return self.path_denied(path) or self.cache_excluded(path)


def _all_match(values: set[str], patterns: list[str]) -> bool:
    return (
        bool(patterns)
        and bool(values)
        and all(any(fnmatchcase(value, pattern) for pattern in patterns) for value in values)
    )


_compiled: dict[int, tuple[FiltersConfig, Filters]] = {}


def filters_of(config: FiltersConfig) -> Filters:
    """The compiled filters of ``config`` (once per process: their memos are shared)."""
    held = _compiled.get(id(config))
    if held is None or held[0] is not config:
        held = _compiled[id(config)] = (config, Filters(config))
    return held[1]
