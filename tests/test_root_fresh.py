"""The root index stays current under `serve` alone: projects fetched on demand appear in both
root formats within `upstream.root_refresh`, with their serials, also after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http

V1_JSON = "application/vnd.pypi.simple.v1+json"


def held_serials(repo: Path) -> dict[str, int]:
    with sqlite3.connect(repo / "pypi-mirror.db") as conn:
        return dict(conn.execute("SELECT name, serial FROM serials"))


def root_lists(mirror: Mirror, names: set[str]) -> bool:
    doc = http(mirror.simple, headers={"Accept": V1_JSON}).json()
    return names <= {p["name"] for p in doc["projects"]}


def test_on_demand_projects_appear_in_the_root(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    names = [f"proj-{i}" for i in range(6)]
    for name in names:
        fake_pypi.add_wheel(name, "1.0")
    mirror = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, upstream={"root_refresh": "1s"})
    with mirror:
        for name in names[:4]:
            assert http(mirror.simple + f"{name}/").status == 200
        assert mirror.wait_for(lambda: root_lists(mirror, set(names[:4])), timeout=10)
        reply = http(mirror.simple, headers={"Accept": V1_JSON})
        held = held_serials(mirror.repo)
        doc = reply.json()
        assert {p["name"]: p["_last-serial"] for p in doc["projects"]} == held
        assert reply.headers["x-pypi-last-serial"] == str(max(held.values()))
        html_reply = http(mirror.simple)
        assert html_reply.headers["x-pypi-last-serial"] == str(max(held.values()))  # both formats
        html = html_reply.body.decode()
        for name in names[:4]:
            assert f'<a href="{name}/">{name}</a>' in html
    # Fetched on demand while serving with a long interval: the restart lists them at once.
    slow = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, upstream={"root_refresh": "1h"})
    with slow:
        for name in names[4:]:
            assert http(slow.simple + f"{name}/").status == 200
        assert not root_lists(slow, set(names[4:]))
    with slow:
        doc = http(slow.simple, headers={"Accept": V1_JSON}).json()
        assert [p["name"] for p in doc["projects"]] == sorted(names)
        assert len(doc["projects"]) == len(held_serials(slow.repo))
        assert doc["meta"]["_last-serial"] == max(held_serials(slow.repo).values())


def test_refresh_skipped_while_another_process_writes(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    import fcntl
    import os

    fake_pypi.add_wheel("alpha", "1.0")
    mirror = Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, upstream={"root_refresh": "1s"})
    with mirror:
        lock = mirror.repo / ".locks" / "root.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            assert http(mirror.simple + "alpha/").status == 200
            assert not mirror.wait_for(lambda: root_lists(mirror, {"alpha"}), timeout=2.5)
            # Still answering while the lock is held elsewhere: nothing waits for it.
            assert http(mirror.simple).status == 200
        finally:
            os.close(fd)
        assert mirror.wait_for(lambda: root_lists(mirror, {"alpha"}), timeout=10)
