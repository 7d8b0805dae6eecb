"""The access log: ``mirror-json`` or Apache ``combined``, buffered, flushed every second,
reopened on SIGUSR1 (logrotate)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
FLUSH_BYTES = 64 * 1024


class _StampCache:
    """The formatted time of the current second: formatting a date costs more than the rest
    of a log line, and a busy server writes thousands of lines within one second."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, moment: float) -> str:
        second = int(moment)
        if second != self._second:
            self._text = self._render(second)
            self._second = second
        return self._text


_utc_stamp = _StampCache(
    lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
)
_local_stamp = _StampCache(
    lambda second: datetime.fromtimestamp(second).astimezone().strftime("%d/%b/%Y:%H:%M:%S %z")
)


class MirrorJsonLines:
    """``mirror-json`` lines, cheaper than one orjson.dumps of a dict per request: the client
    part (address, User-Agent, Referer), the same for every request a client sends, is
    encoded once and remembered (bounded in entries and in key bytes: clients choose it)."""

    MEMO_LIMIT = 10_000
    KEY_LIMIT = 512

    def __init__(self) -> None:
        self._clients: dict[tuple[str, bytes | None, bytes | None], bytes] = {}

    def __call__(
        self,
        moment: float,
        method: str,
        path: str,
        status: int,
        size: int,
        duration_ms: int,
        client_ip: str,
        user_agent: bytes | None,
        referer: bytes | None,
        proxied: bool,
    ) -> bytes:
        key = (client_ip, user_agent, referer)
        client = self._clients.get(key)
        if client is None:
            client = orjson.dumps(
                {
                    "client_ip": client_ip,
                    "user_agent": _for_log(user_agent),
                    "referer": _for_log(referer),
                }
            )[1:-1]
            if len(user_agent or b"") + len(referer or b"") <= self.KEY_LIMIT:
                if len(self._clients) >= self.MEMO_LIMIT:
                    self._clients.clear()
                self._clients[key] = client
        # method is an HTTP token and the stamp ASCII digits: nothing to escape in either.
        return (
            b'{"time":"%s","method":"%s","path":%s,"status":%d,"bytes":%d,"duration_ms":%d,%s,"proxied":"%s"}\n'
            % (
                _utc_stamp(moment).encode(),
                method.encode(),
                orjson.dumps(path),
                status,
                size,
                duration_ms,
                client,
                b"1" if proxied else b"0",
            )
        )


def _for_log(value: bytes | None) -> str:
    """A header as the access log writes it: UTF-8, other bytes escaped (``\\xff``)."""
    return "" if value is None else value.decode("utf-8", "backslashreplace")


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def format_combined(
    *,
    moment: float,
    method: str,
    path: str,
    version: str,
    status: int,
    size: int,
    client_ip: str,
    user_agent: str,
    referer: str,
) -> bytes:
    stamp = _local_stamp(moment)
    request_line = _quote(f"{method} {path} HTTP/{version}")
    line = (
        f'{client_ip} - - [{stamp}] "{request_line}" {status} {size if size else "-"} '
        f'"{_quote(referer or "-")}" "{_quote(user_agent or "-")}"\n'
    )
    return line.encode("utf-8", "backslashreplace")


class AccessLogWriter:
    """Appends lines to the log file in batches. Every worker appends to the same file with
    O_APPEND, one write per batch, so lines from several processes never interleave."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._fd: int | None = None
        self.open()

    def open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def reopen(self) -> None:
        """After logrotate renamed the file: flush to the old one, then start a new one."""
        self.flush()
        old = self._fd
        self.open()
        if old is not None:
            os.close(old)
        log.info("access log reopened: %s", self.path)

    def write(self, line: bytes) -> None:
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buffer or self._fd is None:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:  # a full disk must not take the server down
            log.error("access log write failed: %s", error)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
