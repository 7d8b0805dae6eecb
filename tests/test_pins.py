"""Pins (``cache.pin`` and `pypi-mirror cache pin/unpin/pins`), through the real CLI and the real
`sync` against the fake upstream: pinned files are held in tier 0 whatever their votes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pypi_mirror.db import Database, Vote
from tests.fakepypi import FakeFile, FakePyPI
from tests.mirror import Mirror
from tests.test_cache_commands import cli, on_disk, sync

SIZE = 20_000


def make_mirror(tmp_path: Path, fake: FakePyPI, hot: int, cold: int, **cache: Any) -> Mirror:
    tiers = []
    for name, limit in (("hot", hot), ("cold", cold)):
        (tmp_path / name).mkdir(parents=True)
        tiers.append({"path": str(tmp_path / name), "size_limit": limit})
    return Mirror(
        tmp_path, fake.url, fake.files_url, cache={"tiers": tiers, **cache}, sync={"retry": 0}
    )


prefix_counter = 0


def vote(mirror: Mirror, path: str, prefixes: int) -> None:
    """Votes from ``prefixes`` networks never used before, an hour ago."""
    global prefix_counter
    votes = []
    for _ in range(prefixes):
        prefix_counter += 1
        network = f"10.{prefix_counter // 256}.{prefix_counter % 256}.0/24"
        votes.append(Vote(path, network, time.time() - 3600))
    db = Database.in_repo(mirror.repo)
    try:
        db.add_votes(votes, dedup_window=300)
    finally:
        db.close()


def run_ok(mirror: Mirror, *args: str) -> str:
    done = cli(mirror, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_pin_stays_in_tier_0_under_eviction_pressure(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    old = fake_pypi.add_wheel("pinned-pkg", "1.0", extra_bytes=SIZE)
    new = fake_pypi.add_wheel("pinned-pkg", "2.0", extra_bytes=SIZE)
    popular = [fake_pypi.add_wheel(f"pop-{n}", "1.0", extra_bytes=SIZE) for n in "abc"]
    largest = max(len(f.content) for f in [new, *popular])
    # Tier 0 holds two files, tier 1 one: four candidates, one must go.
    mirror = make_mirror(tmp_path, fake_pypi, hot=2 * largest + 100, cold=largest + 100)
    sync(mirror)
    for votes, file in zip((30, 20, 10), popular, strict=True):
        vote(mirror, file.path, votes)
    run_ok(mirror, "cache", "pin", "pinned-pkg")
    sync(mirror)
    held = on_disk(mirror)
    assert held.get(new.path) == 0  # no votes at all, and yet in the hottest tier
    assert old.path not in held  # only the newest release is pinned by default
    assert held.get(popular[0].path) == 0
    assert held.get(popular[1].path) == 1  # demoted by the pin
    assert popular[2].path not in held  # evicted
    sync(mirror)  # and it stays
    assert on_disk(mirror) == held


def test_a_pin_is_downloaded_without_votes_and_unpin_lets_it_go(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    alone = fake_pypi.add_wheel("lonely", "1.0", extra_bytes=SIZE)
    voted = fake_pypi.add_wheel("voted", "1.0", extra_bytes=SIZE)
    mirror = make_mirror(tmp_path, fake_pypi, hot=10 * SIZE, cold=10 * SIZE)
    sync(mirror)
    vote(mirror, voted.path, 3)  # votes in the window: an unpinned file may go
    out = run_ok(mirror, "cache", "pin", "Lonely")
    assert "pinned Lonely" in out
    assert "already pinned lonely" in run_ok(mirror, "cache", "pin", "lonely")
    sync(mirror)
    assert on_disk(mirror) == {alone.path: 0, voted.path: 0}
    assert (tmp_path / "hot" / alone.path).read_bytes() == alone.content
    assert "unpinned lonely" in run_ok(mirror, "cache", "unpin", "lonely")
    sync(mirror)
    assert on_disk(mirror) == {voted.path: 0}
    done = cli(mirror, "cache", "unpin", "lonely")
    assert done.returncode == 1
    assert "not pinned" in done.stderr


def test_specifiers_select_the_right_versions(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    files: dict[str, FakeFile] = {
        version: fake_pypi.add_wheel("multi", version)
        for version in ("1.0", "1.5", "2.0", "3.0rc1")
    }
    mirror = make_mirror(tmp_path, fake_pypi, hot=1 << 30, cold=1 << 30)
    sync(mirror)
    vote(mirror, "aa/bb/unrelated/unrelated-1.0.tar.gz", 3)

    def pinned_versions() -> set[str]:
        held = on_disk(mirror)
        return {version for version, file in files.items() if file.path in held}

    run_ok(mirror, "cache", "pin", "multi<2")
    sync(mirror)
    assert pinned_versions() == {"1.5"}
    run_ok(mirror, "cache", "unpin", "multi < 2")  # the same pin, spelt differently
    run_ok(mirror, "cache", "pin", "--all-versions", "multi>=1.5")
    sync(mirror)
    assert pinned_versions() == {"1.5", "2.0"}  # no pre-release unless named
    run_ok(mirror, "cache", "unpin", "multi>=1.5")
    run_ok(mirror, "cache", "pin", "multi==3.*")
    sync(mirror)
    assert pinned_versions() == {"3.0rc1"}
    run_ok(mirror, "cache", "unpin", "multi==3.*")
    run_ok(mirror, "cache", "pin", "multi")
    sync(mirror)
    assert pinned_versions() == {"2.0"}


def test_bad_specs_exit_2_naming_the_key_or_argument(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    mirror = make_mirror(tmp_path, fake_pypi, hot=SIZE, cold=SIZE)
    for bad in ("not a spec!", "torch>>2", "torch[cuda]>=2", "torch; python_version<'3'"):
        done = cli(mirror, "cache", "pin", bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert "SPEC" in done.stderr and "invalid pin" in done.stderr
    assert cli(mirror, "cache", "unpin", "a b").returncode == 2
    bad_config = make_mirror(tmp_path / "other", fake_pypi, hot=SIZE, cold=SIZE, pin=["torch>>2"])
    done = cli(bad_config, "cache", "pins")
    assert done.returncode == 2
    assert "cache.pin" in done.stderr and "torch>>2" in done.stderr


def test_pins_lists_both_sources(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    mirror = make_mirror(tmp_path, fake_pypi, hot=SIZE, cold=SIZE, pin=["numpy"])
    assert run_ok(mirror, "cache", "pins").splitlines() == [
        "numpy\tconfig\tnewest matching version"
    ]
    run_ok(mirror, "cache", "pin", "--all-versions", "torch>=2.3")
    run_ok(mirror, "cache", "pin", "requests==2.32.*")
    assert run_ok(mirror, "cache", "pins").splitlines() == [
        "numpy\tconfig\tnewest matching version",
        "torch>=2.3\tcli\tall matching versions",
        "requests==2.32.*\tcli\tnewest matching version",
    ]


def test_prewarmed_files_that_are_pinned_survive_the_next_sync(
    tmp_path: Path, fake_pypi: FakePyPI
) -> None:
    kept = fake_pypi.add_wheel("kept-lib", "1.0")
    dropped = fake_pypi.add_wheel("dropped-lib", "1.0")
    voted = fake_pypi.add_wheel("voted", "1.0")
    mirror = make_mirror(tmp_path, fake_pypi, hot=1 << 30, cold=1 << 30)
    sync(mirror)
    lock = tmp_path / "requirements.txt"
    lock.write_text(
        "".join(f"{f.project}==1.0 --hash=sha256:{f.sha256}\n" for f in (kept, dropped))
    )
    run_ok(mirror, "cache", "prewarm", str(lock))
    assert kept.metadata is not None
    assert on_disk(mirror) == {
        kept.path: 0,
        kept.path + ".metadata": 0,
        dropped.path: 0,
        dropped.path + ".metadata": 0,
    }
    vote(mirror, voted.path, 3)  # votes in the window: unvoted files go
    run_ok(mirror, "cache", "pin", "kept-lib")
    sync(mirror)
    assert on_disk(mirror) == {kept.path: 0, kept.path + ".metadata": 0, voted.path: 0}
