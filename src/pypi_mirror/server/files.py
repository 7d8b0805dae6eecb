"""``/packages/…``: the local copy (any tier, hottest first), else 302 or proxy by client IP."""

from __future__ import annotations

import mimetypes
import time
from typing import Any

from pypi_mirror.filters import filters_of
from pypi_mirror.names import METADATA_SUFFIX, is_valid_file_path
from pypi_mirror.server.clientip import fallback_mode
from pypi_mirror.server.cooldown import cooldown_of
from pypi_mirror.server.http import Request, Response, method_not_allowed, text
from pypi_mirror.server.localfile import answer_file, small_files
from pypi_mirror.server.metadata import serve_remote_metadata
from pypi_mirror.server.proxy import proxy
from pypi_mirror.server.quarantine import refusal
from pypi_mirror.server.state import ServerState

_CONTENT_TYPES = {
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".gz": "application/x-gzip",
    ".bz2": "application/x-bzip2",
    ".egg": "application/zip",
    ".exe": "application/octet-stream",
    METADATA_SUFFIX: "text/plain; charset=utf-8",
}


def content_type_of(filename: str) -> str:
    for suffix, kind in _CONTENT_TYPES.items():
        if filename.endswith(suffix):
            return kind
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


# As PyPI's file host: a file path names one content forever (a local answer only; a 302 or
# a proxied answer carries the upstream's own).
FILE_HEADERS = [("Cache-Control", "max-age=365000000, immutable, public")]
MISS_MEMORY = 1.0  # seconds a path found in no tier is not looked up again
MISS_MEMO_LIMIT = 20_000


class Files:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.filters = filters_of(state.config.filters)
        self.cooldown = cooldown_of(state)
        # Paths found in no tier, until when: the popular misses of a partial mirror repeat
        # many times a second, and each lookup is a failed open per tier. A file that sync
        # places becomes visible within MISS_MEMORY. Bounded in entries (valid paths only).
        self._missing: dict[str, float] = {}
        self.tiers = [
            (str(tier.path), f"tier{tier.index}", position)
            for position, tier in enumerate(state.repo.tiers)
        ]
        self._where: dict[str, int] = {}  # path → position of the tier that last held it
        self._modes: dict[str, str] = {}  # client address → "302" or "proxy"

    def answer(self, request: Request, path: str) -> Response | Any:
        """``path`` is what follows ``/packages/``, unescaped."""
        request.route = "file"
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed()
        if not is_valid_file_path(path):
            return text(404, "not a PyPI file path")
        refused = refusal(self.state.repo.root, path, self.filters)
        if refused is not None:
            # PEP 792 (and filters.deny_projects): none of its files is offered, cached or not.
            return text(404, refused)
        if self.cooldown.refuses(path):  # policy.min_age: local, 302 and proxy alike
            return text(404, "the file is too new for this mirror's policy")
        state = self.state
        now = time.monotonic()
        if self._missing.get(path, 0.0) < now:
            # The tier that held it last time first: a hit in a colder tier then costs no
            # failed open in each hotter one. Any other tier order is searched on a miss.
            last = self._where.get(path, 0)
            order = self.tiers if last == 0 else [self.tiers[last], *self.tiers]
            for tier, outcome, index in order:
                local = small_files.open(f"{tier}/{path}")
                if local is not None:
                    if index != last:
                        if len(self._where) >= MISS_MEMO_LIMIT:
                            self._where.clear()
                        self._where[path] = index
                    request.outcome = outcome
                    response = answer_file(request, local, content_type_of(path), FILE_HEADERS)
                    if request.method == "GET" and response.status < 400:
                        state.vote(request, path)
                    return response
            if len(self._missing) >= MISS_MEMO_LIMIT:
                self._missing.clear()
            self._missing[path] = now + MISS_MEMORY
        if path.endswith(METADATA_SUFFIX):
            # Never redirected: the file host may lack it (see server/metadata.py).
            request.outcome = "proxy"
            return self._remote(request, serve_remote_metadata(request, state, path), path)
        if self._fallback(request) == "proxy":
            request.outcome = "proxy"
            return self._remote(request, proxy(request, state, state.urls.file(path)), path)
        if request.method == "GET":
            state.vote(request, path)
        request.outcome = "302"
        # A validated path holds nothing a Location must escape.
        return Response(302, [("Location", state.urls.redirect_file(path))])

    def _fallback(self, request: Request) -> str:
        """``fallback_mode`` remembered per client address (text: cheap to hash)."""
        address, text = self.state.client(request)
        mode = self._modes.get(text)
        if mode is None:
            mode = fallback_mode(address, self.state.config.fallback)
            if len(self._modes) >= MISS_MEMO_LIMIT:
                self._modes.clear()
            self._modes[text] = mode
        return mode

    async def _remote(self, request: Request, pending: Any, path: str) -> Response:
        response: Response = await pending
        if request.method == "GET" and response.status < 400:
            self.state.vote(request, path)
        return response
