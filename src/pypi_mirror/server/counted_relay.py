"""The proxied-download relay (relay.py), with each upstream request counted in the worker's
tally like the aiohttp session's (tally.trace_config): answers by status class and their
latency up to the head, failures as timeouts or errors. A subclass, so relay.py stays free
of metrics; its cost is two clock reads per proxied request."""

from __future__ import annotations

import time

from pypi_mirror.server.relay import RelayAnswer, RelayError, RelayPool
from pypi_mirror.server.tally import RequestTally


class CountedRelayPool(RelayPool):
    def __init__(self, tally: RequestTally, user_agent: str, timeout: float) -> None:
        super().__init__(user_agent, timeout)
        self.tally = tally

    async def request(self, method: str, url: str, headers: dict[str, str]) -> RelayAnswer:
        started = time.monotonic()
        try:
            answer = await super().request(method, url, headers)
        except RelayError as error:
            failure = TimeoutError(str(error)) if error.timeout else error
            self.tally.upstream_failed(failure, time.monotonic() - started)
            raise
        self.tally.upstream_answered(answer.status, time.monotonic() - started)
        return answer
