"""``pypi-mirror check``: the configuration, the local environment (preflight.py) and the
upstream, each check printed as an ``ok`` or a ``FAIL`` line that names its key.

The upstream checks are short on purpose: a few small requests, each bounded by
UPSTREAM_TIMEOUT, through the same session (proxy, user agent) that serve and sync use. The
root simple index is asked for but not read (at PyPI's size it is tens of megabytes).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from pypi_mirror.config import Config
from pypi_mirror.db import STORE_ERRORS, Database
from pypi_mirror.db.schema import MIGRATIONS
from pypi_mirror.index.serials import NO_XMLRPC_HINT, SIMPLE_JSON, xmlrpc_last_serial
from pypi_mirror.preflight import Finding, findings
from pypi_mirror.upstream import UpstreamError, UpstreamUrls, make_session

UPSTREAM_TIMEOUT = 5.0  # seconds per request: a check, not a sync


def run_check(config: Config, *, upstream: bool = True) -> list[Finding]:
    """Every check, local first; the upstream ones unless ``upstream`` is False."""
    result = findings(config, "check")
    result.append(database_finding(config))
    if upstream:
        result += asyncio.run(upstream_findings(config))
    return result


def database_finding(config: Config) -> Finding:
    """The store answers, and its schema is one this program can use (changes nothing)."""
    store = config.store
    try:
        version = Database.schema_version_of(store)
    except STORE_ERRORS as error:
        return Finding("database.url", False, f"{store.display}: {' '.join(str(error).split())}")
    current = len(MIGRATIONS)
    if version > current:
        return Finding(
            "database.url",
            False,
            f"{store.display}: schema version {version} is newer than this pypi-mirror's "
            f"({current}): upgrade pypi-mirror",
        )
    if version == 0:
        state = "empty: the first command creates the schema"
    elif version < current:
        state = f"schema version {version}: `pypi-mirror db migrate` brings it to {current}"
    else:
        state = f"schema version {version}, current"
    return Finding("database.url", True, f"{store.display} answers ({state})")


def report(results: list[Finding]) -> tuple[str, int]:
    """The printed report and the exit status (0: every check passed, 1: a problem)."""
    lines = [f"{'ok  ' if item.ok else 'FAIL'} {item}" for item in results]
    problems = sum(not item.ok for item in results)
    if problems:
        lines.append(f"{problems} problem(s) found")
    else:
        lines.append("ok: configuration and environment are ready")
    return "\n".join(lines), 1 if problems else 0


async def upstream_findings(config: Config) -> list[Finding]:
    urls = UpstreamUrls(config)
    async with make_session(config) as session:
        checks = [_root_index(config, session, urls), _packages_url(config, session)]
        if config.upstream.serials_source == "xmlrpc":
            checks.append(_xmlrpc(session, urls))
        return list(await asyncio.gather(*checks))


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT)


def _unreachable(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {UPSTREAM_TIMEOUT:.0f}s"
    return str(error) or type(error).__name__


async def _root_index(
    config: Config, session: aiohttp.ClientSession, urls: UpstreamUrls
) -> Finding:
    """GET the simple root, as the source of serials needs it (HTML, or PEP 691 JSON)."""
    url = urls.simple_root()
    wants_json = config.upstream.serials_source == "simple-json"
    key = "upstream.serials_source" if wants_json else "upstream.pypi_url"
    headers = {"Accept": SIMPLE_JSON} if wants_json else {}
    clock = time.monotonic()
    try:
        async with session.get(url, headers=headers, timeout=_timeout()) as response:
            status = response.status
            content_type = response.headers.get("Content-Type", "")
    except (aiohttp.ClientError, TimeoutError) as error:
        return Finding("upstream.pypi_url", False, f"cannot reach {url}: {_unreachable(error)}")
    took = time.monotonic() - clock
    if status != 200:
        return Finding("upstream.pypi_url", False, f"GET {url}: HTTP {status}")
    if wants_json and not content_type.startswith(SIMPLE_JSON):
        return Finding(
            key,
            False,
            f"simple-json: {url} answers {content_type!r}, not PEP 691 JSON; "
            "use `upstream.serials_source: xmlrpc` if it offers XML-RPC",
        )
    what = "PEP 691 JSON root index" if wants_json else "root index"
    return Finding(key, True, f"{url} answers with its {what} (HTTP 200 in {took:.1f}s)")


async def _xmlrpc(session: aiohttp.ClientSession, urls: UpstreamUrls) -> Finding:
    """The call sync starts with (changelog_last_serial: one integer back)."""
    key = "upstream.serials_source"
    try:
        async with asyncio.timeout(UPSTREAM_TIMEOUT):
            serial = await xmlrpc_last_serial(session, urls)
    except UpstreamError as error:
        message = str(error)
        if NO_XMLRPC_HINT not in message:
            message += " (or use `upstream.serials_source: simple-json`)"
        return Finding(key, False, f"xmlrpc: {message}")
    except (aiohttp.ClientError, TimeoutError) as error:
        return Finding(key, False, f"xmlrpc: cannot reach {urls.xmlrpc()}: {_unreachable(error)}")
    except Exception as error:  # a malformed or hostile answer: say so, do not crash
        return Finding(key, False, f"xmlrpc: unusable answer from {urls.xmlrpc()}: {error!r}")
    return Finding(key, True, f"xmlrpc: {urls.xmlrpc()} answers (last serial {serial})")


async def _packages_url(config: Config, session: aiohttp.ClientSession) -> Finding:
    """The file host: any HTTP answer below 500 means it is there (its root is no file)."""
    key = "upstream.packages_url"
    url = f"{config.upstream.packages_url}/"
    try:
        async with session.head(url, timeout=_timeout(), allow_redirects=False) as response:
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        return Finding(key, False, f"cannot reach {url}: {_unreachable(error)}")
    if status >= 500:
        return Finding(key, False, f"HEAD {url}: HTTP {status}")
    return Finding(key, True, f"{url} answers (HTTP {status})")
