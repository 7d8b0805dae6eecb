"""``policy.min_age``: files uploaded less than that long ago are neither listed nor served.

Chosen: filtering at serve time, not at render time. Pages are written once per upstream
change (by `sync` or an on-demand fetch) and a file must age into the pages without a new
write, so each page version is filtered when served and the result kept until the first
held-back file comes of age (or the page changes): no periodic re-render, no stale hour.
Upload times come from the project's PEP 691 page on disk; a file with none counts as new
(fail closed), and so does a file whose project page the mirror does not hold.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from pypi_mirror.names import dist_filename_of, normalize, project_of
from pypi_mirror.repo import Repo
from pypi_mirror.server.localfile import LocalFile
from pypi_mirror.server.state import ServerState

CHECK_INTERVAL = 1.0  # seconds a project's upload times are used before its page is stat'ed
MEMO_LIMIT = 20_000
RECHECK = 60.0  # seconds a filtered page is kept at most
_ANCHOR_END = b"</a><br/>"


def _epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _version_of(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


def _same_version(raw: str, versions: set[Version]) -> bool:
    try:
        return Version(raw) in versions
    except InvalidVersion:
        return False


class Cooldown:
    def __init__(self, repo: Repo, min_age: float | None, exempt: list[str]) -> None:
        self.repo = repo
        self.min_age = min_age
        self.exempt = frozenset(normalize(name) for name in exempt)
        # name → (next stat, page identity, filename → upload epoch or None)
        self._uploads: dict[str, tuple[float, tuple[int, int], dict[str, float | None]]] = {}
        # (page identity, is_json) → (filtered body or None: nothing held back, valid until)
        self._pages: dict[tuple[int, int, bool], tuple[bytes | None, float]] = {}

    def applies_to(self, name: str) -> bool:
        return self.min_age is not None and name not in self.exempt

    def _upload_times(self, name: str, fresh: bool = False) -> dict[str, float | None]:
        """``fresh``: look at the page now (a page being filtered must not meet older times)."""
        now = time.monotonic()
        held = self._uploads.get(name)
        if held is not None and now < held[0] and not fresh:
            return held[2]
        path = self.repo.project_json(name)
        try:
            st = os.stat(path)
            identity = (st.st_ino, st.st_mtime_ns)
            if held is not None and held[1] == identity:
                times = held[2]
            else:
                doc = orjson.loads(Path(path).read_bytes())
                times = {
                    f["filename"]: _epoch(f.get("upload-time"))
                    for f in doc.get("files", [])
                    if isinstance(f, dict) and isinstance(f.get("filename"), str)
                }
        except (OSError, orjson.JSONDecodeError, AttributeError):
            identity, times = (0, 0), {}
        if len(self._uploads) >= MEMO_LIMIT:
            self._uploads.clear()
        self._uploads[name] = (now + CHECK_INTERVAL, identity, times)
        return times

    def refuses(self, path: str) -> bool:
        """Whether the file at ``path`` (after ``/packages/``) is too new to be served."""
        if self.min_age is None:
            return False
        filename = dist_filename_of(path)
        name = project_of(filename)
        if name is None:
            return True  # no project, no upload time: new
        if name in self.exempt:
            return False
        uploaded = self._upload_times(name).get(filename)
        return uploaded is None or uploaded > time.time() - self.min_age

    def page(self, name: str, st: os.stat_result, body: bytes, is_json: bool) -> bytes | None:
        """The page without its too-new files; None when none is held back (serve as is)."""
        assert self.min_age is not None
        key = (st.st_ino, st.st_mtime_ns, is_json)
        now = time.time()
        held = self._pages.get(key)
        if held is not None and now < held[1]:
            return held[0]
        if is_json:
            filtered, until = self._json(body, now)
        else:
            filtered, until = self._html(name, body, now)
        if len(self._pages) >= MEMO_LIMIT:
            self._pages.clear()
        # Looked at again within a minute anyway: an HTML page and its JSON sibling replaced
        # a moment apart must not keep a file hidden until the next write.
        self._pages[key] = (filtered, min(until, now + RECHECK))
        return filtered

    def _new(self, uploaded: float | None, now: float) -> tuple[bool, float]:
        """(too new, when it comes of age); no upload time: new for good (fail closed)."""
        assert self.min_age is not None
        if uploaded is None:
            return True, float("inf")
        ripe = uploaded + self.min_age
        return ripe > now, ripe

    def _json(self, body: bytes, now: float) -> tuple[bytes | None, float]:
        doc = orjson.loads(body)
        kept, dropped, until = [], [], float("inf")
        for entry in doc.get("files", []):
            new, ripe = self._new(_epoch(entry.get("upload-time")), now)
            if new:
                dropped.append(entry["filename"])
                until = min(until, ripe)
            else:
                kept.append(entry)
        if not dropped:
            return None, until
        doc["files"] = kept
        # PEP 700: a version none of whose files is left is not offered either.
        gone = {v for v in map(_version_of, dropped) if v is not None}
        gone -= {v for v in (_version_of(e["filename"]) for e in kept) if v is not None}
        if gone and isinstance(doc.get("versions"), list):
            doc["versions"] = [v for v in doc["versions"] if not _same_version(v, gone)]
        return orjson.dumps(doc), until

    def _html(self, name: str, body: bytes, now: float) -> tuple[bytes | None, float]:
        # The HTML page holds no upload times: its PEP 691 sibling (written with it) has them.
        times = self._upload_times(name, fresh=True)
        lines = body.split(b"\n")
        kept, until, dropped = [], float("inf"), False
        for line in lines:
            if line.startswith(b"<a href=") and line.endswith(_ANCHOR_END):
                filename = line[: -len(_ANCHOR_END)].rpartition(b">")[2].decode()
                new, ripe = self._new(times.get(filename), now)
                if new:
                    dropped = True
                    until = min(until, ripe)
                    continue
            kept.append(line)
        return (b"\n".join(kept) if dropped else None), until

    def cutoff(self, name: str) -> float | None:
        """For the JSON API: files uploaded after this are left out (None: the policy does not
        apply). Moved on the hour, so a rewritten document serves a whole hour; a file may
        appear there up to an hour after it may be downloaded, never before."""
        if not self.applies_to(name):
            return None
        assert self.min_age is not None
        return time.time() // 3600 * 3600 - self.min_age

    def filtered(self, local: LocalFile, is_json: bool, name: str) -> bytes | None:
        """``page`` on a page about to be sent; its descriptor is closed when a body is made."""
        body = local.body
        if body is None:
            body = os.pread(local.fd, local.st.st_size, 0)
        filtered = self.page(name, local.st, body, is_json)
        if filtered is not None:
            local.close()
        return filtered


def drop_new_files(doc: dict[str, Any], cutoff: float) -> None:
    """A PyPI JSON API document without the files uploaded after ``cutoff`` (no upload time:
    new); a release none of whose files is left goes too."""

    def old(entry: object) -> bool:
        if not isinstance(entry, dict):
            return False
        uploaded = _epoch(entry.get("upload_time_iso_8601") or entry.get("upload_time"))
        return uploaded is not None and uploaded <= cutoff

    if isinstance(doc.get("urls"), list):
        doc["urls"] = [entry for entry in doc["urls"] if old(entry)]
    releases = doc.get("releases")
    if isinstance(releases, dict):
        for version, files in list(releases.items()):
            if isinstance(files, list) and files:
                kept = [entry for entry in files if old(entry)]
                if kept:
                    releases[version] = kept
                else:
                    del releases[version]


def cooldown_of(state: ServerState) -> Cooldown:
    """One per worker, shared by the page and file handlers (their memos are one)."""
    held = _per_state.get(id(state))
    if held is None or held[0] is not state:
        policy = state.config.policy
        held = _per_state[id(state)] = (
            state,
            Cooldown(state.repo, policy.min_age, policy.min_age_exempt),
        )
    return held[1]


_per_state: dict[int, tuple[ServerState, Cooldown]] = {}
