"""PyPI's XML-RPC endpoint (``POST {prefix}/pypi``), for mirrors of this mirror: the two calls
a mirror's sync makes, ``list_packages_with_serial`` and ``changelog_last_serial``, answered from
our own serials table. Anything else is an XML-RPC fault.

The call is parsed by defusedxml first (no DTD, no entities: no billion laughs, no external
fetches), then read by ``xmlrpc.client.loads``. Answers are built in a thread (the table can
hold 600k rows) and kept for CACHE_SECONDS, one build shared by concurrent callers.
"""

from __future__ import annotations

import asyncio
import time
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from xml.sax.saxutils import escape

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from pypi_mirror.db import Database, StoreLocation
from pypi_mirror.server.http import Request, Response, text

CACHE_SECONDS = 5.0
CONTENT_TYPE = ("Content-Type", "text/xml; charset=utf-8")
METHODS = ("list_packages_with_serial", "changelog_last_serial")


def fault(code: int, message: str) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode()


def parse_call(body: bytes) -> tuple[str, tuple[object, ...]] | None:
    """(method, params) of a well-formed, harmless methodCall; None otherwise."""
    if not body:
        return None
    try:
        root = defusedxml.ElementTree.fromstring(body, forbid_dtd=True)
    except (DefusedXmlException, SyntaxError, ValueError):  # ParseError is a SyntaxError
        return None
    if root.tag != "methodCall":
        return None
    try:
        params, method = xmlrpc.client.loads(body)
    except (xmlrpc.client.Error, ValueError, TypeError, SyntaxError, OverflowError):
        return None
    except Exception:  # expat's own errors: any malformed input is the client's fault
        return None
    if not isinstance(method, str):
        return None
    return method, params


def serials_response(store: StoreLocation) -> bytes:
    """``list_packages_with_serial``'s answer, rendered directly (dumps is several times
    slower on 600k members)."""
    db = Database(store, "serve")
    try:
        parts = ["<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n"]
        for name, serial in db.iter_serials_sorted():
            parts.append(
                f"<member>\n<name>{escape(name)}</name>\n"
                f"<value><int>{int(serial)}</int></value>\n</member>\n"
            )
        parts.append("</struct></value>\n</param>\n</params>\n</methodResponse>\n")
    finally:
        db.close()
    return "".join(parts).encode()


def last_serial_response(store: StoreLocation) -> bytes:
    db = Database(store, "serve")
    try:
        serial = db.max_serial()
    finally:
        db.close()
    return xmlrpc.client.dumps((serial,), methodresponse=True).encode()


class XmlRpc:
    def __init__(self, store: StoreLocation) -> None:
        self.store = store
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmlrpc")
        self._answers: dict[str, tuple[float, bytes]] = {}
        self._building: dict[str, asyncio.Future[bytes]] = {}
        self._builders: dict[str, Callable[[StoreLocation], bytes]] = {
            "list_packages_with_serial": serials_response,
            "changelog_last_serial": last_serial_response,
        }

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def __call__(self, request: Request) -> Response | object:
        request.route = "xmlrpc"
        if request.method != "POST":
            return text(405, "XML-RPC: POST a methodCall", [("Allow", "POST")])
        call = parse_call(request.body)
        if call is None:
            return Response(200, [CONTENT_TYPE], fault(-32700, "parse error: not a methodCall"))
        method, _params = call
        builder = self._builders.get(method)
        if builder is None:
            return Response(
                200, [CONTENT_TYPE], fault(-32601, f"method not supported: {method[:100]}")
            )
        return self._answer(method, builder)

    async def _answer(self, method: str, builder: Callable[[StoreLocation], bytes]) -> Response:
        known = self._answers.get(method)
        if known is not None and time.monotonic() - known[0] < CACHE_SECONDS:
            return Response(200, [CONTENT_TYPE], known[1])
        pending = self._building.get(method)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = asyncio.ensure_future(
                loop.run_in_executor(self.executor, builder, self.store)
            )
            self._building[method] = pending
            pending.add_done_callback(lambda _f: self._building.pop(method, None))
        try:
            body = await asyncio.shield(pending)
        except Exception:  # the database is unreadable right now
            return Response(200, [CONTENT_TYPE], fault(-32500, "serials unavailable"))
        self._answers[method] = (time.monotonic(), body)
        return Response(200, [CONTENT_TYPE], body)
