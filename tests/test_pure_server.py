"""Pure parts of the server: negotiation, client IPs and prefixes, fallback rules, ranges,
and the vote queue's promises (never blocks, drains on close)."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pypi_mirror.cache.votes import VoteRecorder, is_bot
from pypi_mirror.config import FallbackConfig
from pypi_mirror.db import Database
from pypi_mirror.server.clientip import fallback_mode, parse_ip, real_client_ip, vote_prefix
from pypi_mirror.server.localfile import UNSATISFIABLE, parse_range
from pypi_mirror.server.negotiate import TEXT_HTML, V1_HTML, V1_JSON, choose_content_type

TRUSTED = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]


def test_negotiation_prefers_quality_then_specificity() -> None:
    assert choose_content_type(None) == TEXT_HTML
    assert choose_content_type("") == TEXT_HTML
    assert choose_content_type("application/*") == V1_HTML
    assert choose_content_type("application/vnd.pypi.simple.latest+json") == V1_JSON
    assert choose_content_type("text/*;q=0.5, */*;q=0.1") == TEXT_HTML
    assert choose_content_type("*/*;q=0.1, application/vnd.pypi.simple.v1+json") == V1_JSON
    assert choose_content_type("image/png") is None
    assert choose_content_type("text/html;q=0") is None
    assert choose_content_type("text/html", format_param=V1_JSON) == V1_JSON
    assert choose_content_type("text/html;q=banana") is None


@given(st.text(max_size=200))
def test_negotiation_never_crashes(header: str) -> None:
    assert choose_content_type(header) in (None, TEXT_HTML, V1_HTML, V1_JSON)


def test_client_ip_rules() -> None:
    # untrusted peer: the header is ignored
    assert str(real_client_ip("8.8.8.8", "1.2.3.4", TRUSTED)) == "8.8.8.8"
    # trusted peer: the rightmost untrusted hop is the client
    assert str(real_client_ip("127.0.0.1", "1.2.3.4, 5.6.7.8, 10.0.0.2", TRUSTED)) == "5.6.7.8"
    # every hop trusted: the leftmost
    assert str(real_client_ip("127.0.0.1", "10.9.9.9, 10.0.0.2", TRUSTED)) == "10.9.9.9"
    # garbage ends the walk at the last good hop
    assert str(real_client_ip("127.0.0.1", "1.2.3.4, garbage, 10.0.0.2", TRUSTED)) == "10.0.0.2"
    assert str(real_client_ip("127.0.0.1", "nonsense", TRUSTED)) == "127.0.0.1"
    # IPv4-mapped IPv6 counts as IPv4, for the peer and for trust
    assert str(real_client_ip("::ffff:127.0.0.1", "9.9.9.9", TRUSTED)) == "9.9.9.9"
    assert str(parse_ip("::ffff:1.2.3.4")) == "1.2.3.4"
    assert str(parse_ip("[2001:db8::1]")) == "2001:db8::1"


@given(st.ip_addresses())
def test_prefix_contains_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    network = ipaddress.ip_network(vote_prefix(address))
    assert address in network
    assert network.prefixlen == (24 if address.version == 4 else 48)


def test_fallback_rules_first_match_wins() -> None:
    config = FallbackConfig.model_validate(
        {
            "default": "302",
            "rules": [
                {"cidr": "10.1.0.0/16", "mode": "302"},
                {"cidr": "10.0.0.0/8", "mode": "proxy"},
                {"cidr": "2001:db8::/32", "mode": "proxy"},
            ],
        }
    )
    assert fallback_mode(ipaddress.ip_address("10.1.2.3"), config) == "302"
    assert fallback_mode(ipaddress.ip_address("10.2.2.3"), config) == "proxy"
    assert fallback_mode(ipaddress.ip_address("2001:db8::5"), config) == "proxy"
    assert fallback_mode(ipaddress.ip_address("8.8.8.8"), config) == "302"
    assert fallback_mode(None, config) == "302"


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),
        ("bytes=50-1000", 100, (50, 99)),
        ("bytes=100-", 100, UNSATISFIABLE),
        ("bytes=-0", 100, UNSATISFIABLE),
        ("bytes=5-2", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=a-b", 100, None),
        (None, 100, None),
        ("bytes=\u00b2-\u00b3", 100, None),  # Unicode digits pass str.isdigit(): not ours
        ("bytes=\u0661-", 100, None),
        ("bytes=0-" + "9" * 5000, 100, (0, 99)),  # beyond int()'s 4,300-digit limit
        ("bytes=" + "9" * 5000 + "-", 100, UNSATISFIABLE),
        ("bytes=-" + "9" * 5000, 100, (0, 99)),
        (" bytes = 1 - 2 ", 100, (1, 2)),
    ],
)
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**12))
def test_parse_range_never_raises(header: str, size: int) -> None:
    chosen = parse_range(header, size)
    if isinstance(chosen, tuple):
        assert 0 <= chosen[0] <= chosen[1] < size


def test_bots() -> None:
    assert is_bot("Mozilla/5.0 (compatible; Googlebot/2.1)")
    assert is_bot("bandersnatch/6.5.0 (cpython 3.11)")
    assert not is_bot("pip/24.0 {...}")
    assert not is_bot(None)


def test_vote_queue_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    Database.in_repo(tmp_path).close()
    recorder = VoteRecorder(tmp_path / "pypi-mirror.db", dedup_window=0, capacity=10)
    # not started: nothing drains the queue, so the 11th vote must be dropped, at once
    started = time.monotonic()
    results = [recorder.record(f"ab/cd/{'0' * 60}/f{i}.whl", "1.2.3.0/24") for i in range(15)]
    assert time.monotonic() - started < 1
    assert results.count(True) == 10 and recorder.dropped == 5
    recorder.start()
    recorder.close()
    db = Database.in_repo(tmp_path)
    assert db.vote_count() == 10  # every accepted vote stored on close


def test_vote_dedup_window(tmp_path: Path) -> None:
    Database.in_repo(tmp_path).close()
    recorder = VoteRecorder(tmp_path / "pypi-mirror.db", dedup_window=300)
    recorder.start()
    path = f"ab/cd/{'1' * 60}/x.whl"
    now = time.time()
    recorder.record(path, "1.2.3.0/24", now)
    recorder.record(path, "1.2.3.0/24", now + 100)  # within the window: counts once
    recorder.record(path, "1.2.4.0/24", now + 100)  # another network: counts
    recorder.record(path, "1.2.3.0/24", now + 400)  # after the window: counts again
    recorder.close()
    assert len(Database.in_repo(tmp_path).votes_for(path)) == 3


def test_votes_from_many_writers_are_all_stored(tmp_path: Path) -> None:
    Database.in_repo(tmp_path).close()
    recorders = [VoteRecorder(tmp_path / "pypi-mirror.db", dedup_window=0) for _ in range(4)]
    for recorder in recorders:
        recorder.start()

    def vote(recorder: VoteRecorder, worker: int) -> None:
        for i in range(250):
            while not recorder.record(f"ab/cd/{'2' * 60}/w{worker}-{i}.whl", "1.2.3.0/24"):
                time.sleep(0.001)

    threads = [threading.Thread(target=vote, args=(r, n)) for n, r in enumerate(recorders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for recorder in recorders:
        recorder.close()
    assert sum(r.failed for r in recorders) == 0
    assert Database.in_repo(tmp_path).vote_count() == 1000
