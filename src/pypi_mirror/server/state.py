"""Everything a worker's request handlers share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp

from pypi_mirror.cache.votes import VoteRecorder, is_bot
from pypi_mirror.config import Config
from pypi_mirror.repo import Repo
from pypi_mirror.server.accesslog import AccessLogWriter
from pypi_mirror.server.clientip import ClientResolver, IPAddress, vote_prefix
from pypi_mirror.server.counted_relay import CountedRelayPool
from pypi_mirror.server.http import Request
from pypi_mirror.server.relay import RelayPool
from pypi_mirror.server.tally import RequestTally
from pypi_mirror.upstream import UpstreamUrls, make_session

PREFIX_MEMO_LIMIT = 10_000
MEMO_KEY_LIMIT = 256  # longer User-Agents are judged each time, never kept
RECENT_VOTES_LIMIT = 100_000  # (path, prefix) pairs remembered for dedup, ~20 MB at most


@dataclass
class ServerState:
    config: Config
    repo: Repo
    urls: UpstreamUrls
    votes: VoteRecorder
    access_log: AccessLogWriter | None
    tally: RequestTally | None = None  # counts upstream requests (metrics)
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)
    _relay: RelayPool | None = field(default=None, repr=False)
    clients: ClientResolver = field(init=False, repr=False)
    _prefixes: dict[str, str] = field(default_factory=dict, repr=False)
    _bots: dict[bytes | None, bool] = field(default_factory=dict, repr=False)
    _recent: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.clients = ClientResolver(self.config.trusted_proxies)

    def session(self) -> aiohttp.ClientSession:
        """The upstream session, made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            traces = None if self.tally is None else [self.tally.trace_config()]
            self._session = make_session(self.config, trace_configs=traces)
        return self._session

    def relay(self) -> RelayPool | None:
        """The connection pool for proxied downloads; None when ``upstream.proxy`` is set
        (aiohttp's client then carries every request: it speaks HTTP and SOCKS proxies)."""
        if self.config.upstream.proxy:
            return None
        if self._relay is None:
            user_agent, timeout = self.config.sync.user_agent, self.config.timeouts.upstream
            self._relay = (
                RelayPool(user_agent, timeout)
                if self.tally is None
                else CountedRelayPool(self.tally, user_agent, timeout)
            )
        return self._relay

    async def close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._relay is not None:
            self._relay.close()

    def client_ip(self, request: Request) -> IPAddress | None:
        return self.client(request)[0]

    def client(self, request: Request) -> tuple[IPAddress | None, str]:
        """The request's real client address, and as the access log writes it (kept on the
        request: asked for by the vote and by the log line)."""
        known = request.client
        if known is None:
            known = request.client = self.clients.resolve(
                request.remote, request.header(b"x-forwarded-for")
            )
        return known  # type: ignore[return-value]

    def vote(self, request: Request, path: str) -> None:
        """Queue a vote for one download of ``path`` (already validated) unless a bot asked.
        Never blocks."""
        address, text = self.client(request)
        if address is None:
            return
        user_agent = request.headers.get(b"user-agent")
        bot = self._bots.get(user_agent)
        if bot is None:
            bot = is_bot(None if user_agent is None else user_agent.decode("latin-1"))
            if user_agent is None or len(user_agent) <= MEMO_KEY_LIMIT:
                if len(self._bots) >= PREFIX_MEMO_LIMIT:
                    self._bots.clear()
                self._bots[user_agent] = bot
        if bot:
            return
        # Keyed by the address as text: hashing an ipaddress object costs a microsecond.
        prefix = self._prefixes.get(text)
        if prefix is None:
            if len(self._prefixes) >= PREFIX_MEMO_LIMIT:
                self._prefixes.clear()
            prefix = self._prefixes[text] = vote_prefix(address)
        # The store's rule, applied here first: a (file, network) pair already voted within
        # dedup_window counts once, so repeats (CI farms) never reach the writer thread.
        now = time.time()
        key = (path, prefix)
        if now - self._recent.get(key, -1e18) < self.config.cache.dedup_window:
            return
        if len(self._recent) >= RECENT_VOTES_LIMIT:
            self._recent.clear()
        self._recent[key] = now
        self.votes.record(path, prefix, now)
