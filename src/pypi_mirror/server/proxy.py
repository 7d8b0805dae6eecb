"""Streaming from the upstream: never buffered whole, status kept, 502/504 on failure.

aiohttp's client fetches; the answer goes out through the one request path (protocol.py) as
a streamed body, so the client's request head is never parsed a second time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp

from pypi_mirror.server.http import Request, Response, StreamBody, UpstreamBroke, text
from pypi_mirror.server.relay import RelayError, RelayPool
from pypi_mirror.server.state import ServerState

log = logging.getLogger(__name__)

# Request headers passed on to the upstream; nothing else of the client's goes out.
FORWARDED_REQUEST_HEADERS = (
    (b"range", "Range"),
    (b"if-range", "If-Range"),
    (b"if-none-match", "If-None-Match"),
    (b"if-modified-since", "If-Modified-Since"),
)
# Response headers passed back to the client.
FORWARDED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "X-PyPI-Last-Serial",
    "Content-Encoding",
)
_FORWARDED_RESPONSE_KEYS = tuple((name, name.lower()) for name in FORWARDED_RESPONSE_HEADERS)
_REDIRECTS = (301, 302, 303, 307, 308)


async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as error:
        # (a TimeoutError here is the upstream stalling beyond timeouts.upstream)
        raise UpstreamBroke(str(error) or type(error).__name__) from None


async def proxy(request: Request, state: ServerState, url: str) -> Response:
    """The upstream's answer for ``url`` (built from the configured bases only)."""
    request.proxied = True
    headers = {
        name: value.decode("latin-1")
        for key, name in FORWARDED_REQUEST_HEADERS
        if (value := request.headers.get(key)) is not None
    }
    # Bytes must pass through as the upstream stores them, so Content-Length stays right.
    headers["Accept-Encoding"] = "identity"
    relay = state.relay()
    if relay is not None:
        return await _through_relay(request, relay, url, headers, state.config.timeouts.upstream)
    return await _through_aiohttp(request, state, url, headers)


async def _through_relay(
    request: Request, relay: RelayPool, url: str, headers: dict[str, str], timeout: float
) -> Response:
    try:
        answer = await relay.request(request.method, url, headers)
    except RelayError as error:
        if error.timeout:
            return text(504, "upstream timed out")
        log.warning("upstream request %s failed: %s", url, error)
        return text(502, "upstream unreachable")
    forwarded = [
        (name, value)
        for name, key in _FORWARDED_RESPONSE_KEYS
        if (value := answer.headers.get(key)) is not None
    ]
    if answer.status in _REDIRECTS and "location" in answer.headers:
        forwarded.append(("Location", answer.headers["location"]))
    if request.method == "HEAD":
        answer.release()
        return Response(answer.status, forwarded, announced=answer.content_length)
    body = StreamBody(answer.chunks(timeout), answer.content_length, answer.release, answer.direct)
    return Response(answer.status, forwarded, stream=body)


async def _through_aiohttp(
    request: Request, state: ServerState, url: str, headers: dict[str, str]
) -> Response:
    try:
        upstream = await state.session().request(
            request.method, url, headers=headers, allow_redirects=False, auto_decompress=False
        )
    except TimeoutError:
        return text(504, "upstream timed out")
    except aiohttp.ClientError as error:
        log.warning("upstream request %s failed: %s", url, error)
        return text(502, "upstream unreachable")
    forwarded = [
        (name, upstream.headers[name])
        for name in FORWARDED_RESPONSE_HEADERS
        if name in upstream.headers
    ]
    if upstream.status in _REDIRECTS and "Location" in upstream.headers:
        forwarded.append(("Location", upstream.headers["Location"]))
    if request.method == "HEAD":
        upstream.release()
        return Response(upstream.status, forwarded, announced=upstream.content_length)
    body = StreamBody(_chunks(upstream), upstream.content_length, upstream.release)
    return Response(upstream.status, forwarded, stream=body)
