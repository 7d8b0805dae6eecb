"""What a request handler sees and gives back: ``Request`` (filled by the one parser, in
protocol.py) and ``Response`` (written by the protocol). No I/O here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import quote

from pypi_mirror import __version__

SERVER_NAME = f"pypi-mirror/{__version__}"

CORS = ("Access-Control-Allow-Origin", "*")  # on index pages and JSON API answers, as PyPI

_REASONS = {status.value: status.phrase for status in HTTPStatus}


def status_line(version: str, status: int) -> str:
    return f"HTTP/{version} {status} {_REASONS.get(status, 'Unknown')}\r\n"


class Request:
    """One parsed request. Header names are lower-case bytes; values are the raw bytes the
    client sent (llhttp has already refused control characters in them). ``header`` decodes
    as Latin-1, which maps every byte to one character: nothing is lost and nothing raises."""

    __slots__ = (
        "body",
        "client",
        "headers",
        "keep_alive",
        "method",
        "outcome",
        "path",
        "proxied",
        "query",
        "remote",
        "route",
        "started",
        "target",
        "version",
    )

    def __init__(self, remote: str | None) -> None:
        self.remote = remote
        self.method = ""
        self.target = ""  # the request target as sent (ASCII: llhttp refuses anything else)
        self.path = ""
        self.query = ""
        self.version = "1.1"
        self.headers: dict[bytes, bytes] = {}
        self.body = b""  # kept for POST only (XML-RPC), up to the protocol's MAX_BODY
        self.keep_alive = True
        self.started = 0.0
        self.proxied = False  # the answer came through the upstream (access log field)
        # What answered, for metrics: route "page", "root", "file", "json", "xmlrpc" or "other";
        # outcome "tier0", "tier1"…, "302", "proxy", "local", "fetched" (or "" when the
        # status alone says it: 304, 404, errors).
        self.route = "other"
        self.outcome = ""
        self.client: tuple[object, str] | None = None  # memo of the resolved client address

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def text_for_log(self, name: bytes) -> str:
        """A header as the access log writes it: UTF-8, other bytes escaped (``\\xff``)."""
        value = self.headers.get(name)
        return "" if value is None else value.decode("utf-8", "backslashreplace")


class FileBody:
    """``count`` bytes of an open descriptor from ``offset``; ``close`` runs once it is sent
    (or abandoned)."""

    __slots__ = ("close", "count", "fd", "offset")

    def __init__(self, fd: int, offset: int, count: int, close: Callable[[], None]) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count
        self.close = close


class UpstreamBroke(Exception):
    """Raised by a stream body's iterator when the upstream's body broke off."""


class StreamBody:
    """A body that arrives in pieces (from the upstream). ``length`` None: unknown, so the
    connection closes after it. ``close`` runs once it is sent or abandoned."""

    __slots__ = ("chunks", "close", "direct", "length")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        length: int | None,
        close: Callable[[], None],
        direct: Callable[[Callable[[bytes], bool] | None], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.length = length
        self.close = close
        # Optional: register a writer the source calls with pieces directly (see relay.py)
        self.direct = direct


class Response:
    """Status, headers (without Content-Length, Date, Server, Connection: the protocol adds
    them) and one kind of body: bytes, a file range or a stream. For HEAD the body's length is
    announced and nothing is sent."""

    __slots__ = ("announced", "body", "file", "headers", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        file: FileBody | None = None,
        stream: StreamBody | None = None,
        announced: int | None = None,
    ) -> None:
        self.announced = announced  # HEAD through the upstream: the length it announced
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.file = file
        self.stream = stream

    @property
    def length(self) -> int | None:
        if self.file is not None:
            return self.file.count
        if self.stream is not None:
            return self.stream.length
        return len(self.body)

    def release(self) -> None:
        """Close what the body holds open (a response that will not be sent)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def text(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    extra = headers or []
    return Response(
        status, [("Content-Type", "text/plain; charset=utf-8"), *extra], message.encode() + b"\n"
    )


# Characters a Location may carry as they are; everything else (CR, LF, spaces, quotes,
# non-ASCII) is percent-encoded, so no client byte can end the header line.
_LOCATION_SAFE = "/:?=&%~+@!$'()*,;.-_#"


def redirect(status: int, location: str) -> Response:
    return Response(status, [("Location", quote(location, safe=_LOCATION_SAFE))])


def method_not_allowed() -> Response:
    return text(405, "method not allowed", [("Allow", "GET, HEAD")])


# A CORS preflight on the index pages and the JSON API (they are public, read-only).
PREFLIGHT_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, HEAD"),
    ("Access-Control-Max-Age", "86400"),
    ("Allow", "GET, HEAD, OPTIONS"),
)


def preflight() -> Response:
    return Response(204, list(PREFLIGHT_HEADERS))


class DateHeader:
    """The ``Date`` and ``Server`` header lines of the current second (formatting a date costs
    more than a small response's other headers)."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._text = f"Date: {formatdate(second, usegmt=True)}\r\nServer: {SERVER_NAME}\r\n"
            self._second = second
        return self._text


date_and_server = DateHeader()
