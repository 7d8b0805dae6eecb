"""The real client IP, its vote prefix, and the fallback mode that applies to it (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from pypi_mirror.config import FallbackConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str | None) -> IPAddress | None:
    """An address, with IPv4-mapped IPv6 (``::ffff:1.2.3.4``) counted as IPv4."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443" as some proxies write it
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def real_client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The peer, or — only when the peer is a trusted proxy — the X-Forwarded-For client.

    The chain is walked from the right (the hop nearest to us), skipping trusted proxies; the
    first untrusted hop is the client. A malformed entry ends the walk at the last good hop,
    so a forged header can never name an address a trusted hop did not add.
    """
    client = parse_ip(peer)
    if client is None or not forwarded_for or not _trusted(client, trusted):
        return client
    for hop in reversed(forwarded_for.split(",")):
        address = parse_ip(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return client


def vote_prefix(address: IPAddress) -> str:
    """The network a vote counts for: IPv4 /24, IPv6 /48."""
    bits = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


def fallback_mode(address: IPAddress | None, fallback: FallbackConfig) -> str:
    """ "302" or "proxy" for this client: the first matching rule, else the default."""
    if address is not None:
        for rule in fallback.rules:
            if address.version == rule.cidr.version and address in rule.cidr:
                return rule.mode
    return fallback.default


class ClientResolver:
    """``real_client_ip`` remembered per (peer, X-Forwarded-For), with the address as text.

    Parsing addresses costs more than the rest of a small request; for one configuration the
    answer depends on those two strings only, and a server sees the same few over and over.
    Bounded: clients choose the strings.
    """

    LIMIT = 10_000
    KEY_LIMIT = 256  # a longer X-Forwarded-For is resolved each time, never kept (bytes bound)

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = trusted
        self._known: dict[tuple[str | None, str | None], tuple[IPAddress | None, str]] = {}

    def resolve(self, peer: str | None, forwarded_for: str | None) -> tuple[IPAddress | None, str]:
        key = (peer, forwarded_for)
        known = self._known.get(key)
        if known is None:
            address = real_client_ip(peer, forwarded_for, self._trusted)
            known = (address, str(address) if address is not None else (peer or "-"))
            if forwarded_for is None or len(forwarded_for) <= self.KEY_LIMIT:
                if len(self._known) >= self.LIMIT:
                    self._known.clear()
                self._known[key] = known
        return known
