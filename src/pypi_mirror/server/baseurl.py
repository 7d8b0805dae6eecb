"""The mirror's own base URL (``scheme://host[:port]``) as a client reached it, for absolute
links in JSON API answers: ``public_url`` when configured, else the request's scheme and Host,
with X-Forwarded-Proto / X-Forwarded-Host honoured only from a trusted proxy."""

from __future__ import annotations

import re

from pypi_mirror.config import Config
from pypi_mirror.server.clientip import IPNetwork, parse_ip
from pypi_mirror.server.http import Request

# A host name (RFC 1123 labels) or an IPv4 / bracketed IPv6 address, with an optional port.
# Nothing else may reach a URL we hand out: no userinfo, path, spaces or quotes.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?",
    re.ASCII,
)
_MEMO_LIMIT = 1024
_KEY_LIMIT = 300


def is_valid_host(host: str) -> bool:
    return len(host) <= 260 and _HOST.fullmatch(host) is not None


def _trusted(peer: str | None, trusted: list[IPNetwork]) -> bool:
    address = parse_ip(peer)
    return address is not None and any(
        address.version == net.version and address in net for net in trusted
    )


class BaseUrl:
    """``__call__`` gives the base URL, or None when the request's host is unusable (400)."""

    def __init__(self, config: Config) -> None:
        self.public = config.public_url
        self.scheme = "https" if config.tls is not None else "http"
        self.trusted = list(config.trusted_proxies)
        self._peers: dict[str | None, bool] = {}  # peer address → trusted proxy?
        self._known: dict[tuple[str | None, str | None, str | None], str | None] = {}

    def __call__(self, request: Request) -> str | None:
        if self.public is not None:
            return self.public
        host = request.header(b"host")
        proto = forwarded_host = None
        if self.trusted and (
            b"x-forwarded-proto" in request.headers or b"x-forwarded-host" in request.headers
        ):
            trusted = self._peers.get(request.remote)
            if trusted is None:
                trusted = _trusted(request.remote, self.trusted)
                if len(self._peers) >= _MEMO_LIMIT:
                    self._peers.clear()
                self._peers[request.remote] = trusted
            if trusted:
                proto = request.header(b"x-forwarded-proto")
                forwarded_host = request.header(b"x-forwarded-host")
        key = (host, proto, forwarded_host)
        try:
            return self._known[key]
        except KeyError:
            pass
        base = self._work_out(host, proto, forwarded_host)
        if sum(len(part or "") for part in key) <= _KEY_LIMIT:
            if len(self._known) >= _MEMO_LIMIT:
                self._known.clear()
            self._known[key] = base
        return base

    def _work_out(self, host: str | None, proto: str | None, forwarded: str | None) -> str | None:
        scheme = self.scheme
        if proto is not None:
            # The first hop's value (the proxy nearest the client wrote it first).
            first = proto.split(",", 1)[0].strip().lower()
            if first not in ("http", "https"):
                return None
            scheme = first
        if forwarded is not None:
            host = forwarded.split(",", 1)[0].strip()
        if not host or not is_valid_host(host.strip()):
            return None
        return f"{scheme}://{host.strip().lower()}"
