"""``timeouts.read``: a client must send its whole request head within this time.

aiohttp bounds the size of a request head but not the time it takes to arrive, so a client
trickling header bytes (slowloris) could hold a connection for ever. The handler here starts
a timer at the first byte of each request head and closes the connection if the blank line
that ends it has not arrived in time.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

_HEAD_END = b"\r\n\r\n"


class ReadTimeoutRequestHandler(RequestHandler):  # type: ignore[misc]
    read_timeout: float = 30.0

    _head_timer: asyncio.TimerHandle | None = None
    _head_tail: bytes = b""

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(
                self.read_timeout, self._head_too_slow
            )
            self._head_tail = b""
        # Only the head matters (our endpoints take no bodies); look for its end, also
        # across the boundary of two reads.
        window = self._head_tail + data
        if _HEAD_END in window:
            self._head_timer.cancel()
            self._head_timer = None
            self._head_tail = b""
        else:
            self._head_tail = window[-3:]
        super().data_received(data)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class ReadTimeoutServer(web.Server):
    """A low-level aiohttp server whose connections enforce ``timeouts.read``."""

    def __init__(self, *args: object, read_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._handler_class = type(
            "BoundReadTimeoutRequestHandler",
            (ReadTimeoutRequestHandler,),
            {"read_timeout": read_timeout},
        )

    def __call__(self) -> RequestHandler:
        return self._handler_class(self, loop=self._loop, **self._kwargs)
