"""Everything a worker's request handlers share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from pypi_mirror.cache.votes import VoteRecorder, is_bot
from pypi_mirror.config import Config
from pypi_mirror.names import is_valid_file_path
from pypi_mirror.repo import Repo
from pypi_mirror.server.accesslog import AccessLogWriter
from pypi_mirror.server.clientip import ClientResolver, IPAddress, vote_prefix
from pypi_mirror.upstream import UpstreamUrls, make_session

CLIENT_KEY = "client"  # (address, text) of the real client, on each request


@dataclass
class ServerState:
    config: Config
    repo: Repo
    urls: UpstreamUrls
    votes: VoteRecorder
    access_log: AccessLogWriter | None
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)
    clients: ClientResolver = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.clients = ClientResolver(self.config.trusted_proxies)

    def session(self) -> aiohttp.ClientSession:
        """The upstream session, made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            self._session = make_session(self.config)
        return self._session

    async def close_session(self) -> None:
        if self._session is not None:
            await self._session.close()

    def client_ip(self, request: web.BaseRequest) -> IPAddress | None:
        return self.client(request)[0]

    def client(self, request: web.BaseRequest) -> tuple[IPAddress | None, str]:
        """The request's real client address, and as the access log writes it (kept on the
        request: asked for by the vote and by the log line)."""
        known = request.get(CLIENT_KEY)
        if known is None:
            known = request[CLIENT_KEY] = self.clients.resolve(
                request.remote, request.headers.get("X-Forwarded-For")
            )
        return known

    def vote(self, request: web.BaseRequest, path: str) -> None:
        """One download of ``path``: queue a vote unless a bot asked. Never blocks."""
        if not is_valid_file_path(path) or is_bot(request.headers.get("User-Agent")):
            return
        address = self.client_ip(request)
        if address is not None:
            self.votes.record(path, vote_prefix(address), time.time())
