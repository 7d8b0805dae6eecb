"""The upstream's PEP 691 JSON project page, read beside ``/pypi/<name>/json`` for what only
it carries: PEP 792 ``project-status`` and PEP 740 ``provenance``.

One extra request per changed project, and never a failure of its own: an upstream that does
not serve the page (404, 406, HTML) is not asked again for ``UNSUPPORTED_PAUSE``; any other
error leaves that one project without the extras. ``upstream.fetch_simple_json: false`` turns
it off.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from pypi_mirror.config import Config
from pypi_mirror.index.render import PROJECT_STATUSES, RenderError, SimpleExtras
from pypi_mirror.names import is_normalized

log = logging.getLogger(__name__)

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
UNSUPPORTED_PAUSE = 3600.0  # seconds an upstream without PEP 691 JSON pages is not asked


def _provenance_url(value: Any, page_url: str) -> str | None:
    """PEP 740: a URL, possibly relative to the page. The mirror serves no provenance
    objects, so the link stays the upstream's, made absolute."""
    if not isinstance(value, str) or not value:
        return None
    url = urljoin(page_url, value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url


def parse_simple_extras(body: bytes, page_url: str) -> SimpleExtras:
    """The extras of a PEP 691 project page; RenderError when it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RenderError(f"not JSON: {error}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise RenderError("not a PEP 691 project page")
    status: str | None = None
    reason: str | None = None
    marker = doc.get("project-status")
    if isinstance(marker, dict) and marker.get("status") in PROJECT_STATUSES:
        status = marker["status"]
        text = marker.get("reason")
        reason = text if isinstance(text, str) and text else None
    provenance: dict[str, str | None] | None = None
    for entry in doc["files"]:
        if isinstance(entry, dict) and "provenance" in entry:
            filename = entry.get("filename")
            if isinstance(filename, str):
                provenance = {} if provenance is None else provenance
                provenance[filename] = _provenance_url(entry["provenance"], page_url)
    return SimpleExtras(status=status, status_reason=reason, provenance=provenance)


class SimpleJsonReader:
    """Fetches the extras of one project at a time; remembers an upstream without them."""

    def __init__(self, config: Config) -> None:
        self.enabled = config.upstream.fetch_simple_json
        self.base = config.upstream.pypi_url
        self._paused_until = 0.0

    def _pause(self, why: str) -> None:
        if self._paused_until < time.monotonic():
            log.info(
                "the upstream serves no PEP 691 JSON project pages (%s): "
                "project status and provenance are not mirrored for the next %.0f s",
                why,
                UNSUPPORTED_PAUSE,
            )
        self._paused_until = time.monotonic() + UNSUPPORTED_PAUSE

    async def fetch(self, session: aiohttp.ClientSession, name: str) -> SimpleExtras | None:
        """The extras of ``name`` (normalised), or None when they cannot be had now."""
        if not self.enabled or self._paused_until > time.monotonic() or not is_normalized(name):
            return None
        url = f"{self.base}/simple/{name}/"
        try:
            async with session.get(
                url, headers={"Accept": SIMPLE_JSON}, allow_redirects=False
            ) as response:
                kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if response.status in (404, 406) or (
                    response.status == 200 and not kind.endswith("json")
                ):
                    self._pause(f"HTTP {response.status} {kind}")
                    return None
                if response.status != 200:
                    log.debug("%s: PEP 691 page answered %d", name, response.status)
                    return None
                body = await response.read()
            return parse_simple_extras(body, url)
        except (aiohttp.ClientError, TimeoutError, RenderError) as error:
            log.debug("%s: PEP 691 page not read: %s", name, error)
            return None
