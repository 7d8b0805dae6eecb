"""Streaming from the upstream: never buffered whole, status kept, 502/504 on failure."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from pypi_mirror.server.sendfile import STATUS_KEY, WRITE_TIMEOUT_KEY

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# Request headers passed on to the upstream; nothing else of the client's goes out.
FORWARDED_REQUEST_HEADERS = ("Range", "If-Range", "If-None-Match", "If-Modified-Since")
# Response headers passed back to the client.
FORWARDED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "X-PyPI-Last-Serial",
)


async def proxy_stream(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    url: str,
) -> web.StreamResponse:
    """Send the upstream's answer for ``url`` (built from the configured bases only)."""
    request["proxied"] = True
    headers = {k: request.headers[k] for k in FORWARDED_REQUEST_HEADERS if k in request.headers}
    # Bytes must pass through as the upstream stores them, so Content-Length stays right.
    headers["Accept-Encoding"] = "identity"
    try:
        upstream = await session.request(
            request.method, url, headers=headers, allow_redirects=False, auto_decompress=False
        )
    except TimeoutError:
        return web.Response(status=504, text="upstream timed out\n")
    except aiohttp.ClientError as error:
        log.warning("upstream request %s failed: %s", url, error)
        return web.Response(status=502, text="upstream unreachable\n")
    async with upstream:
        response = web.StreamResponse(status=upstream.status)
        for name in FORWARDED_RESPONSE_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        if "Content-Encoding" in upstream.headers:
            response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
        if upstream.status in (301, 302, 303, 307, 308) and "Location" in upstream.headers:
            response.headers["Location"] = upstream.headers["Location"]
        if request.method == "HEAD":
            await response.prepare(request)
            await response.write_eof()
            return response
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        request[STATUS_KEY] = upstream.status
        sent = 0
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                async with asyncio.timeout(request.get(WRITE_TIMEOUT_KEY)):
                    await response.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as error:
            # (a TimeoutError here is the client not reading within timeouts.write, or the
            # upstream stalling beyond timeouts.upstream)
            # Headers are out: the only honest signal left is to cut the connection, so the
            # client sees a short body instead of a clean end.
            log.warning("upstream body for %s broke off after %d bytes: %s", url, sent, error)
            request["bytes_sent"] = sent
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("upstream body broke off") from error
        if upstream.content_length is not None and sent != upstream.content_length:
            request["bytes_sent"] = sent
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("upstream body shorter than announced")
        request["bytes_sent"] = sent
        await response.write_eof()
        return response
