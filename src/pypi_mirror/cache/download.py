"""Verified streaming download of one file into a tier.

The bytes go to a temporary file beside the target (same folder, so same filesystem), are
hashed on the way, and the file is renamed into place only when the size and the digest match
what the index promised. A reader therefore sees the whole, verified file or nothing; a crash
leaves at most a temporary file, which the next inventory removes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import aiohttp

from pypi_mirror.repo import is_disk_full, temp_path_for
from pypi_mirror.upstream import is_transient_status

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
GONE_STATUSES = (404, 410)
# First pause before another try (doubled each time); HEAD requests of the cache use it too.
RETRY_BACKOFF = 0.5


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Digest:
    """What the downloaded bytes must hash to: ``algorithm`` is a hashlib name."""

    algorithm: Literal["sha256", "blake2b_256"]
    hexdigest: str

    def hasher(self) -> hashlib._Hash:
        if self.algorithm == "blake2b_256":
            return hashlib.blake2b(digest_size=32)
        return hashlib.sha256()


@dataclass(frozen=True)
class Outcome:
    status: Literal["ok", "gone", "error", "stopped"]
    size: int = 0
    reason: str = ""


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


class _Stopped(Exception):
    pass


async def download(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    *,
    digest: Digest,
    size: int | None,
    retries: int,
    stop: StopSignal | None = None,
    backoff: float = RETRY_BACKOFF,
) -> Outcome:
    """Fetch ``url`` into ``target``, verified against ``digest`` (and ``size`` if known).

    404/410 is ``gone`` (not an error: the file no longer exists upstream). Network errors,
    transient statuses (5xx, 408, 429), short bodies and digest mismatches are retried
    ``retries`` times; then ``error``, and nothing is placed (nor any temporary file left).
    Other statuses and a full disk are an ``error`` at once.
    """
    attempt = 0
    while True:
        try:
            placed = await _attempt(session, url, target, digest, size, stop)
        except _Stopped:
            return Outcome("stopped", reason="stopped")
        except _Fatal as error:
            return Outcome("error", reason=str(error))
        except (_Retryable, aiohttp.ClientError, TimeoutError, OSError) as error:
            reason = _describe(error)
            # A full disk does not empty itself by asking the upstream again.
            if attempt >= retries or is_disk_full(error):
                return Outcome("error", reason=reason)
            log.debug("%s: %s; retrying", url, reason)
            await asyncio.sleep(backoff * 2**attempt)
            attempt += 1
            continue
        if placed is None:
            return Outcome("gone", reason="not found upstream")
        return Outcome("ok", size=placed)


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    return str(error) or type(error).__name__


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    digest: Digest,
    size: int | None,
    stop: StopSignal | None,
) -> int | None:
    """One try: the placed size, or None when the upstream says the file is gone."""
    # The stored bytes are what the hash covers: ask for them without any content coding.
    async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
        if response.status in GONE_STATUSES:
            return None
        if is_transient_status(response.status):  # the upstream or the path to it may recover
            raise _Retryable(f"HTTP {response.status}")
        if response.status != 200:
            raise _Fatal(f"HTTP {response.status}")
        if size is not None and response.content_length not in (None, size):
            raise _Retryable(f"upstream announces {response.content_length} bytes, index {size}")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path_for(target)
        try:
            received = await _receive(response, temp, digest, size, stop)
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    return received


async def _receive(
    response: aiohttp.ClientResponse,
    temp: Path,
    digest: Digest,
    size: int | None,
    stop: StopSignal | None,
) -> int:
    hasher = digest.hasher()
    received = 0
    with open(temp, "wb") as handle:
        async for chunk in response.content.iter_chunked(CHUNK):
            if stop is not None and stop.is_set():
                raise _Stopped
            received += len(chunk)
            if size is not None and received > size:
                # Never let a lying upstream write past what the plan made room for.
                raise _Retryable(f"more than the expected {size} bytes")
            hasher.update(chunk)
            handle.write(chunk)
        if size is not None and received != size:
            raise _Retryable(f"short body: {received} of {size} bytes")
        if hasher.hexdigest() != digest.hexdigest:
            raise _Retryable(f"{digest.algorithm} mismatch")
        handle.flush()
        # Durable before it becomes visible: after a power cut the name never points at
        # a file whose blocks were not written.
        await asyncio.to_thread(os.fsync, handle.fileno())
    return received
