"""Where the index sync learns every project's serial: the upstream's XML-RPC
``list_packages_with_serial`` (the default) or its PEP 691 JSON root index (``_last-serial``).

Both answers are large (about 930,000 projects, 40-60 MB at PyPI's size) and untrusted, so they
are parsed as a stream into one dict of normalised name -> serial, never held as a whole:
- XML goes through xmlrpc.client's Unmarshaller behind defusedxml's expat parser (no DTDs,
  entities or external references), fed chunk by chunk from the socket; each struct member is
  folded into the result as soon as it is complete.
- JSON is walked entry by entry with the stdlib decoder's ``raw_decode`` (a full ``orjson.loads``
  would build a million dicts: 400 MB).

Several display names may normalise to one project; the highest serial wins.
"""

from __future__ import annotations

import json
import logging
import re
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from xml.parsers.expat import ExpatError

import aiohttp
from defusedxml.common import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

from pypi_mirror.names import is_valid_project_name, normalize
from pypi_mirror.upstream import UpstreamError, UpstreamUrls, is_transient_status

log = logging.getLogger(__name__)

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
NO_XMLRPC_HINT = (
    "this upstream does not answer XML-RPC: list it from its PEP 691 JSON root index "
    "instead, with `upstream.serials_source: simple-json` in the configuration"
)
_CHUNK = 1 << 20


@dataclass
class UpstreamSerials:
    """Every listed project (normalised name -> serial) and the upstream's global serial."""

    projects: dict[str, int]
    global_serial: int
    invalid_names: int = 0  # listed names that are not project names (ignored)
    entries: int = 0  # entries read, before folding names together


Counter = Callable[[int], None]
_COUNT_EVERY = 1 << 14


class _Collector:
    """Folds (display name, serial) pairs into a normalised dict; tells ``counter`` how many
    entries were read, every few thousand (progress on a listing that takes a while)."""

    def __init__(self, counter: Counter | None = None) -> None:
        self.projects: dict[str, int] = {}
        self.invalid = 0
        self.seen = 0
        self.counter = counter

    def add(self, display: Any, serial: Any) -> None:
        self.seen += 1
        if self.counter is not None and self.seen % _COUNT_EVERY == 0:
            self.counter(_COUNT_EVERY)
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
            raise UpstreamError(f"serial of {display!r} is not a serial: {serial!r}")
        if not isinstance(display, str) or not is_valid_project_name(display):
            self.invalid += 1
            return
        name = normalize(display)
        if self.projects.get(name, -1) < serial:
            self.projects[name] = serial


class _SerialsUnmarshaller(xmlrpc.client.Unmarshaller):
    """xmlrpc.client's Unmarshaller that hands each member of the top-level struct to
    ``on_member`` as soon as it ends, so a million-entry answer never sits on the stack."""

    dispatch: ClassVar[dict[str, Any]] = dict(xmlrpc.client.Unmarshaller.dispatch)

    def __init__(self, on_member: Callable[[Any, Any], None]) -> None:
        super().__init__(use_builtin_types=True)
        self._on_member = on_member
        self._in_fault = False

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        if tag == "fault":
            self._in_fault = True
        super().start(tag, attrs)

    def end_member(self, data: str) -> None:
        # Only members directly in the result struct (depth 1); a fault's struct is left whole.
        if len(self._marks) != 1 or self._in_fault:
            return
        mark = self._marks[0]
        if len(self._stack) != mark + 2:
            raise xmlrpc.client.ResponseError("malformed struct member")
        serial = self._stack.pop()
        display = self._stack.pop()
        self._on_member(display, serial)

    dispatch["member"] = end_member


def _xmlrpc_request(method: str) -> bytes:
    return xmlrpc.client.dumps((), method).encode()


async def _post_xmlrpc(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    unmarshaller: xmlrpc.client.Unmarshaller,
) -> tuple[Any, ...]:
    parser = DefusedExpatParser(unmarshaller)
    async with session.post(
        url, data=_xmlrpc_request(method), headers={"Content-Type": "text/xml"}
    ) as response:
        if response.status != 200:
            transient = is_transient_status(response.status)
            # A refusal (PyPI behind some proxies, most mirrors: 405) is not asked again,
            # and the operator is told the way around it.
            hint = "" if transient else f" from {url}; {NO_XMLRPC_HINT}"
            raise UpstreamError(
                f"XML-RPC {method}: HTTP {response.status}{hint}", transient=transient
            )
        content_type = response.headers.get("Content-Type", "")
        if content_type and "xml" not in content_type.lower():
            raise UpstreamError(
                f"XML-RPC {method}: expected text/xml from {url}, got {content_type!r}; "
                f"{NO_XMLRPC_HINT}",
                transient=False,
            )
        async for chunk in response.content.iter_chunked(_CHUNK):
            parser.feed(chunk)
    try:
        parser.close()
        return unmarshaller.close()
    except xmlrpc.client.Fault as fault:
        raise UpstreamError(
            f"XML-RPC {method}: fault {fault.faultCode}: {fault.faultString}"
        ) from None


def parse_serials_xml(chunks: list[bytes] | bytes) -> tuple[dict[str, int], int]:
    """Parse a ``list_packages_with_serial`` response body (for tests and tools).

    Returns (normalised name -> serial, invalid names skipped)."""
    collector = _Collector()
    unmarshaller = _SerialsUnmarshaller(collector.add)
    parser = DefusedExpatParser(unmarshaller)
    for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
        parser.feed(chunk)
    parser.close()
    try:
        unmarshaller.close()
    except xmlrpc.client.Fault as fault:
        raise UpstreamError(f"XML-RPC fault {fault.faultCode}: {fault.faultString}") from None
    return collector.projects, collector.invalid


async def xmlrpc_last_serial(session: aiohttp.ClientSession, urls: UpstreamUrls) -> int:
    """The upstream's global serial (XML-RPC ``changelog_last_serial``: a small answer)."""
    (global_serial,) = await _post_xmlrpc(
        session, urls.xmlrpc(), "changelog_last_serial", xmlrpc.client.Unmarshaller()
    )
    if not isinstance(global_serial, int) or isinstance(global_serial, bool):
        raise UpstreamError(f"changelog_last_serial is not a serial: {global_serial!r}")
    return global_serial


async def serials_from_xmlrpc(
    session: aiohttp.ClientSession, urls: UpstreamUrls, counter: Counter | None = None
) -> UpstreamSerials:
    # The global serial first: anything that changes while the list downloads carries a
    # higher serial and is picked up by the next run.
    global_serial = await xmlrpc_last_serial(session, urls)
    collector = _Collector(counter)
    result = await _post_xmlrpc(
        session, urls.xmlrpc(), "list_packages_with_serial", _SerialsUnmarshaller(collector.add)
    )
    if len(result) != 1 or result[0] != {}:
        raise UpstreamError("list_packages_with_serial: the answer is not one struct")
    return UpstreamSerials(collector.projects, global_serial, collector.invalid, collector.seen)


# -- PEP 691 JSON root index ---------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def _as_serial(value: Any) -> int | None:
    """PyPI writes ``meta._last-serial`` as a string, entries' ``_last-serial`` as integers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_serials_json(body: bytes, counter: Counter | None = None) -> UpstreamSerials:
    """Walk a PEP 691 root index one entry at a time (memory: the result, not a parsed tree)."""
    try:
        return _walk_root_json(body.decode("utf-8"), counter)
    except UnicodeDecodeError as error:
        raise UpstreamError(f"root index is not UTF-8: {error}") from None
    except ValueError as error:  # json.JSONDecodeError
        raise UpstreamError(f"root index is not valid JSON: {error}") from None


class _Text:
    """A cursor over JSON text with the stdlib decoder for single values."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._decode = json.JSONDecoder().raw_decode
        self.skip()

    def skip(self) -> None:
        self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise UpstreamError(f"root index: expected {char!r} at offset {self.pos}")
        self.pos += 1
        self.skip()

    def value(self) -> Any:
        value, self.pos = self._decode(self.text, self.pos)
        self.skip()
        return value

    def items(self, close: str) -> Any:
        """Yield once per element of an array or object until ``close``, eating commas."""
        if self.peek() == close:
            self.pos += 1
            self.skip()
            return
        while True:
            yield
            if self.peek() == ",":
                self.expect(",")
                continue
            self.expect(close)
            return


def _walk_root_json(text: str, counter: Counter | None) -> UpstreamSerials:
    cursor = _Text(text)
    collector = _Collector(counter)
    meta: Any = None
    seen_projects = False
    cursor.expect("{")
    for _ in cursor.items("}"):
        key = cursor.value()
        cursor.expect(":")
        if key != "projects":
            value = cursor.value()
            if key == "meta":
                meta = value
            continue
        seen_projects = True
        cursor.expect("[")
        for _ in cursor.items("]"):
            entry = cursor.value()
            if not isinstance(entry, dict):
                raise UpstreamError("root index: a project entry is not an object")
            serial = _as_serial(entry.get("_last-serial"))
            if serial is None:
                raise UpstreamError(
                    f"root index: {entry.get('name')!r} has no _last-serial "
                    "(this upstream does not publish serials in its JSON index)"
                )
            collector.add(entry.get("name"), serial)
    if cursor.pos != len(text):
        raise UpstreamError(f"root index: trailing data at offset {cursor.pos}")
    if not seen_projects:
        raise UpstreamError("root index has no 'projects' list")
    global_serial = _as_serial(meta.get("_last-serial")) if isinstance(meta, dict) else None
    if global_serial is None:
        # No meta serial: the highest project serial is the best lower bound we have.
        global_serial = max(collector.projects.values(), default=0)
    return UpstreamSerials(collector.projects, global_serial, collector.invalid, collector.seen)


async def serials_from_simple_json(
    session: aiohttp.ClientSession, urls: UpstreamUrls, counter: Counter | None = None
) -> UpstreamSerials:
    async with session.get(urls.simple_root(), headers={"Accept": SIMPLE_JSON}) as response:
        if response.status != 200:
            raise UpstreamError(
                f"root index: HTTP {response.status}",
                transient=is_transient_status(response.status),
            )
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith(SIMPLE_JSON):
            # The same request gets the same answer: not asked again.
            raise UpstreamError(
                f"root index: expected {SIMPLE_JSON}, got {content_type!r}", transient=False
            )
        header_serial = _as_serial(response.headers.get("X-PyPI-Last-Serial"))
        body = await response.read()
    serials = parse_serials_json(body, counter)
    if header_serial is not None:
        serials.global_serial = max(serials.global_serial, header_serial)
    return serials


async def fetch_serials(
    session: aiohttp.ClientSession,
    urls: UpstreamUrls,
    source: str,
    counter: Counter | None = None,
) -> UpstreamSerials:
    """Every listed project's serial from ``source`` ("xmlrpc" or "simple-json");
    ``counter`` is told, now and then, how many more entries were read."""
    try:
        if source == "simple-json":
            return await serials_from_simple_json(session, urls, counter)
        return await serials_from_xmlrpc(session, urls, counter)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise UpstreamError(f"cannot list projects ({source}): {error!r}") from None
    except (ExpatError, DefusedXmlException, xmlrpc.client.ResponseError) as error:
        # DefusedXmlException: a DTD, entity or external reference was refused.
        raise UpstreamError(f"unsafe or malformed XML from the upstream: {error!r}") from None
