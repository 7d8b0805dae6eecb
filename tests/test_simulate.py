"""``pypi-mirror simulate`` and ``cache.policy``: a small generated log with a hand-computed
answer, in the three formats the simulator reads, and the policy through plan.py."""

from __future__ import annotations

import json
import lzma
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pypi_mirror.cache.logread import Download
from pypi_mirror.cache.plan import Entry, make_plan
from pypi_mirror.cache.simulate import load_requests
from pypi_mirror.cli import main
from pypi_mirror.db import Database
from tests.fakepypi import FakePyPI
from tests.test_cache_manager import World

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
PIP = "pip/25.0"
BOT = "bandersnatch/6.5.0"


def _path(name: str) -> str:
    return f"ab/cd/{'0' * 60}/{name}"


SIZES = {"a-1.0.tar.gz": 1000, "b-1.0-py3-none-any.whl": 1500, "c-1.0-py3-none-any.whl": 3000}
A, B, C = (_path(name) for name in SIZES)
SIZE = {_path(name): size for name, size in SIZES.items()}

# (seconds after T0, client IP, file, User-Agent). Syncs run at the first request (+10 s)
# and one hour later. Hour 0, all misses:
#   C: 10.0.1.5, 10.0.1.9 (same /24 within dedup_window: not stored), 10.0.2.1, 10.0.3.1
#      -> 3 votes from 3 prefixes;
#   B: 10.0.1.5, 10.0.2.5 -> 2 votes, 2 prefixes; two bandersnatch requests: no vote;
#   A: 10.0.1.5, then 10.0.1.6 ten minutes later (stored: past the dedup window) -> 2 votes
#      from 1 prefix: never a candidate (min_vote_count 2 counts distinct prefixes).
# The plan at +3610 s with 3000 bytes: "votes" holds C (3 votes; B does not fit beside it),
# "per-byte" holds B (2 votes / 1500 B beat 3 / 3000 B; C then does not fit).
# Hour 1: C twice, B once, A once.
EVENTS = [
    (10, "10.0.1.5", C, PIP),
    (20, "10.0.1.9", C, PIP),
    (30, "10.0.2.1", C, PIP),
    (40, "10.0.3.1", C, PIP),
    (100, "10.0.1.5", B, PIP),
    (200, "10.0.2.5", B, PIP),
    (300, "10.0.4.1", B, BOT),
    (310, "10.0.5.1", B, BOT),
    (400, "10.0.1.5", A, PIP),
    (1000, "10.0.1.6", A, PIP),
    (4000, "10.0.6.1", C, PIP),
    (4010, "10.0.7.1", C, PIP),
    (4020, "10.0.6.1", B, PIP),
    (4100, "10.0.8.1", A, PIP),
]
REQUESTS = 14
BYTES = sum(SIZE[path] for _t, _ip, path, _ua in EVENTS)  # 28,500
VOTES = 11  # 14 - 2 bot requests - 1 duplicate
SECONDS = 4100 - 10
EXPECTED = {
    "votes": {  # C is held: its two hour-1 requests (both votes) hit
        "request_hit": 2 / REQUESTS,
        "byte_hit": 6000 / BYTES,
        "vote_hit": 2 / VOTES,
        "downloaded_per_day": 3000 / SECONDS * 86400,
    },
    "per-byte": {  # B is held: one hour-1 request hits
        "request_hit": 1 / REQUESTS,
        "byte_hit": 1500 / BYTES,
        "vote_hit": 1 / VOTES,
        "downloaded_per_day": 1500 / SECONDS * 86400,
    },
}


def _stamp(offset: int) -> datetime:
    return datetime.fromtimestamp(T0 + offset, UTC)


def write_trace(path: Path) -> None:
    lines = [
        json.dumps({"t": T0 + t, "ip": ip, "path": p, "size": SIZE[p], "ua": ua})
        for t, ip, p, ua in EVENTS
    ]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(lzma.compress(data) if path.suffix == ".xz" else data)


def _access_log_requests() -> list[tuple[int, str, str, str, int, int, str]]:
    """(offset, ip, method, url, status, bytes, ua): the events as the server logs them (a
    302 and a 206 among them: their sizes come from the 200s) and lines that are no
    download: a HEAD, a 404, a page, a path that is no file path, a 302 of a file no line
    gives the size of (skipped and counted)."""
    lines = []
    for index, (t, ip, p, ua) in enumerate(EVENTS):
        status, size = (302, 0) if index == 10 else (206, 700) if index == 11 else (200, SIZE[p])
        lines.append((t, ip, "GET", f"/pypi/packages/{p}", status, size, ua))
    lines += [
        (50, "10.0.9.1", "HEAD", f"/pypi/packages/{C}", 200, 0, PIP),
        (60, "10.0.9.1", "GET", f"/pypi/packages/{C}", 404, 9, PIP),
        (70, "10.0.9.1", "GET", "/pypi/simple/c/", 200, 500, PIP),
        (80, "10.0.9.1", "GET", "/pypi/packages/../../etc/passwd", 200, 500, PIP),
        (90, "10.0.9.1", "GET", f"/pypi/packages/{_path('d-1.0.tar.gz')}", 302, 0, PIP),
    ]
    return sorted(lines)


def write_mirror_json(path: Path) -> None:
    with path.open("w") as out:
        for t, ip, method, url, status, size, ua in _access_log_requests():
            item = {
                "time": _stamp(t).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "method": method,
                "path": url,
                "status": status,
                "bytes": size,
                "duration_ms": 3,
                "client_ip": ip,
                "user_agent": ua,
                "referer": "",
                "proxied": "0",
            }
            out.write(json.dumps(item) + "\n")


def write_combined(path: Path) -> None:
    with path.open("w") as out:
        for t, ip, method, url, status, size, ua in _access_log_requests():
            stamp = _stamp(t).strftime("%d/%b/%Y:%H:%M:%S +0000")
            body = size if size else "-"
            out.write(f'{ip} - - [{stamp}] "{method} {url} HTTP/1.1" {status} {body} "-" "{ua}"\n')


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"repo_path": str(tmp_path / "repo")}))
    return config


def _simulate(tmp_path: Path, log: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "rows.json"
    args = ["simulate", str(log), "-c", str(_config(tmp_path)), "--json", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


@pytest.mark.parametrize(
    "name, writer",
    [
        ("trace.jsonl", write_trace),
        ("trace.jsonl.xz", write_trace),
        ("access.log", write_mirror_json),
        ("access-combined.log", write_combined),
    ],
)
def test_hand_computed_answer_in_every_format(
    tmp_path: Path, name: str, writer: Callable[[Path], None]
) -> None:
    log = tmp_path / name
    writer(log)
    output, data = _simulate(tmp_path, log, "--budget", "3000", "--warmup", "0")
    assert f"{REQUESTS} downloads" in output
    assert "2 bot requests" in output and "1 duplicate votes" in output
    assert f"{VOTES} votes counted" in output
    if "access" in name:
        assert "skipped: 1 requests for 1 files of unknown size" in output
    rows = {row["policy"]: row for row in data["rows"]}
    assert set(rows) == {"votes", "per-byte"}
    for policy, expected in EXPECTED.items():
        row = rows[policy]
        assert row["budget"] == 3000
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), (policy, key)


def test_several_logs_out_of_order_and_the_config_tiers(tmp_path: Path) -> None:
    """Hour 1 in the first file, hour 0 in the second: replayed in time order. Without
    --budget the config's tiers are the budget: 1000 + 3000 bytes hold what 3000 did."""
    full = tmp_path / "full.jsonl"
    write_trace(full)
    lines = full.read_text().splitlines(keepends=True)
    late, early = tmp_path / "late.jsonl", tmp_path / "early.jsonl"
    late.write_text("".join(lines[10:]))
    early.write_text("".join(lines[:10]))
    tiers = [tmp_path / "hot", tmp_path / "cold"]
    for tier in tiers:
        tier.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repo_path": str(tmp_path / "repo"),
                "cache": {
                    "tiers": [
                        {"path": str(tiers[0]), "size_limit": 1000},
                        {"path": str(tiers[1]), "size_limit": 3000},
                    ]
                },
            }
        )
    )
    out = tmp_path / "rows.json"
    args = ["simulate", str(late), str(early), "-c", str(config), "--warmup", "0"]
    result = CliRunner().invoke(main, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["policy"]: row for row in json.loads(out.read_text())["rows"]}
    for policy, expected in EXPECTED.items():
        assert rows[policy]["budget"] == 4000
        assert rows[policy]["tiers"] == [1000, 3000]
        for key, value in expected.items():
            assert rows[policy][key] == pytest.approx(value), (policy, key)


def test_json_rows_shape(tmp_path: Path) -> None:
    log = tmp_path / "trace.jsonl"
    write_trace(log)
    _output, data = _simulate(
        tmp_path, log, "--budget", "3000,1m", "--policy", "votes", "--warmup", "0"
    )
    assert list(data) == ["rows"]
    assert [(row["budget"], row["policy"]) for row in data["rows"]] == [
        (3000, "votes"),
        (1 << 20, "votes"),
    ]
    for row in data["rows"]:
        assert {
            "budget",
            "policy",
            "request_hit",
            "byte_hit",
            "vote_hit",
            "downloaded_per_day",
        } <= set(row)
        assert isinstance(row["budget"], int) and isinstance(row["policy"], str)
        for key in ("request_hit", "byte_hit", "vote_hit"):
            assert 0 <= row[key] <= 1
    # 1 MiB holds B and C (A never has two prefixes): 3 hits of 14.
    assert data["rows"][1]["request_hit"] == pytest.approx(3 / REQUESTS)


def test_warmup_is_left_out_of_the_rates(tmp_path: Path) -> None:
    log = tmp_path / "trace.jsonl"
    write_trace(log)
    # One hour of warm-up: the rates are over hour 1 only (4 requests, C hits twice).
    _output, data = _simulate(
        tmp_path, log, "--budget", "3000", "--policy", "votes", "--warmup", "1h"
    )
    (row,) = data["rows"]
    assert row["request_hit"] == pytest.approx(2 / 4)
    assert row["vote_hit"] == pytest.approx(2 / 4)
    assert row["warmup_request_hit"] == 0


def test_sizes_from_the_database_when_the_log_has_none(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    write_mirror_json(log)
    repo = tmp_path / "repo"
    repo.mkdir()
    db = Database(repo / "pypi-mirror.db")
    db.set_remote_sizes([(_path("d-1.0.tar.gz"), 5000)], now=T0)
    db.close()
    output, _data = _simulate(tmp_path, log, "--budget", "3000", "--warmup", "0")
    assert f"{REQUESTS + 1} downloads" in output
    assert "unknown size" not in output


def test_bad_policy_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "trace.jsonl"
    write_trace(log)
    result = CliRunner().invoke(main, ["simulate", str(log), "--policy", "lru"])
    assert result.exit_code == 2
    assert "lru" in result.output


def test_policy_changes_the_real_plan() -> None:
    """At a tight budget, per-byte holds five small files where votes holds the big one."""

    def entries() -> list[Entry]:
        big = Entry("aa/bb/big/big-1.0.tar.gz", 100, 10, None)
        small = [Entry(f"aa/bb/s{i}/small{i}-1.0.tar.gz", 20, 3, None) for i in range(5)]
        return [big, *small]

    def downloaded(policy: str) -> set[str]:
        plan = make_plan(entries(), [], [100], policy=policy)
        return {step.path for step in plan.steps}

    assert downloaded("votes") == {"aa/bb/big/big-1.0.tar.gz"}
    assert downloaded("per-byte") == {f"aa/bb/s{i}/small{i}-1.0.tar.gz" for i in range(5)}


def test_policy_is_validated() -> None:
    from pypi_mirror.config import ConfigError, config_from_dict

    assert config_from_dict({"repo_path": "/tmp/x"}).cache.policy == "votes"
    assert config_from_dict({"repo_path": "/tmp/x", "cache": {"policy": "per-byte"}})
    with pytest.raises(ConfigError, match=r"cache\.policy"):
        config_from_dict({"repo_path": "/tmp/x", "cache": {"policy": "lru"}})


@pytest.fixture
def world(tmp_path: Path, fake_pypi: FakePyPI) -> Iterator[World]:
    w = World(tmp_path, fake_pypi)
    yield w
    w.db.close()


@pytest.mark.parametrize("policy", ["votes", "per-byte"])
async def test_sync_plans_with_the_configured_policy(world: World, policy: str) -> None:
    big = world.publish("big", size=6000)
    small = [world.publish(f"small{i}", size=300) for i in range(3)]
    world.hold_index("big", *(f"small{i}" for i in range(3)))
    assert sum(file.size for file in small) <= big.size
    world.limits = [big.size, 0]
    world.cache = {"policy": policy}
    world.vote(big.path, 5)
    for file in small:
        world.vote(file.path, 2)

    result = await world.run()

    assert not result.failures
    held = {path for path in (big.path, *(f.path for f in small)) if world.where(path) == 0}
    if policy == "votes":
        assert held == {big.path}
    else:
        assert held == {file.path for file in small}


def test_ipv6_clients_vote_per_48_and_ipv4_per_24() -> None:
    downloads = [
        Download(T0, "2001:db8:1:1::5", C, 3000, PIP),
        Download(T0 + 1, "2001:db8:1:ffff::9", C, 3000, PIP),  # same /48: a duplicate
        Download(T0 + 2, "2001:db8:2::1", C, 3000, PIP),
        Download(T0 + 3, "::ffff:10.0.1.5", C, 3000, PIP),  # IPv4-mapped: 10.0.1.0/24
        Download(T0 + 4, "10.0.1.200", C, 3000, PIP),  # a duplicate of the line above
    ]
    requests = load_requests(downloads, dedup_window=300)
    assert requests.prefix_count == 3
    assert list(requests.voted) == [1, 0, 1, 1, 0]
    assert requests.duplicate_votes == 2


def test_a_log_without_downloads_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "empty.log"
    log.write_text('{"time":"2026-01-01T00:00:00Z","method":"GET","path":"/pypi/simple/"}\n')
    result = CliRunner().invoke(main, ["simulate", str(log), "-c", str(_config(tmp_path))])
    assert result.exit_code == 1
    assert "no file downloads" in result.output
