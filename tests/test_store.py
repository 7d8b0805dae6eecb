"""Saving a project: three documents written atomically, then the serial; and removing one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pypi_mirror.config import config_from_dict
from pypi_mirror.db import Database
from pypi_mirror.index.render import RenderError, render_project
from pypi_mirror.index.store import delete_project_pages, load_index_files, save_project
from pypi_mirror.repo import TEMP_PREFIX, Repo

DATA = Path(__file__).parent / "data" / "projects"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repo = Repo(config_from_dict({"repo_path": str(tmp_path / "repo")}))
    repo.create_folders()
    return repo


@pytest.fixture
def db(repo: Repo) -> Iterator[Database]:
    database = Database.in_repo(repo.root)
    yield database
    database.close()


def six_body() -> bytes:
    return (DATA / "six" / "pypi.json").read_bytes()


def changed_six_body() -> bytes:
    """six a few serials later: one more file yanked."""
    doc = orjson.loads(six_body())
    doc["last_serial"] += 7
    doc["releases"]["1.17.0"][0]["yanked"] = True
    doc["releases"]["1.17.0"][0]["yanked_reason"] = "broken"
    return orjson.dumps(doc)


def temp_files(repo: Repo) -> list[Path]:
    return [p for p in repo.root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_save_writes_pages_json_and_serial(repo: Repo, db: Database) -> None:
    body = six_body()
    rendered = save_project(repo, db, body, on_demand=False)

    assert rendered == render_project(body)
    assert repo.project_html("six").read_bytes() == rendered.html
    assert repo.project_json("six").read_bytes() == rendered.json
    assert repo.pypi_json("six").read_bytes() == body  # as fetched, byte for byte
    stored = db.get_serial("six")
    assert stored is not None
    serial, _fetched_at, on_demand = stored
    assert serial == 26356948 == rendered.serial
    assert on_demand is False


def test_save_twice_overwrites_atomically_and_updates_serial(repo: Repo, db: Database) -> None:
    save_project(repo, db, six_body(), on_demand=False)
    body = changed_six_body()
    rendered = save_project(repo, db, body, on_demand=True)

    assert repo.project_html("six").read_bytes() == rendered.html
    assert b'data-yanked="broken"' in rendered.html
    assert repo.project_json("six").read_bytes() == rendered.json
    assert repo.pypi_json("six").read_bytes() == body
    stored = db.get_serial("six")
    assert stored is not None
    assert (stored[0], stored[2]) == (26356948 + 7, True)
    assert temp_files(repo) == []
    assert sorted(p.name for p in repo.project_dir("six").iterdir()) == [
        "index.html",
        "index.v1.json",
    ]


def test_bad_body_writes_nothing(repo: Repo, db: Database) -> None:
    save_project(repo, db, six_body(), on_demand=False)
    before = repo.project_html("six").read_bytes()
    with pytest.raises(RenderError):
        save_project(repo, db, b'{"info": {"name": "six"}}', on_demand=False)
    assert repo.project_html("six").read_bytes() == before
    stored = db.get_serial("six")
    assert stored is not None and stored[0] == 26356948


def test_serial_is_not_recorded_when_writing_fails(repo: Repo, db: Database) -> None:
    # A folder where json/six should go makes the last atomic write fail.
    repo.pypi_json("six").mkdir(parents=True)
    with pytest.raises(OSError):
        save_project(repo, db, six_body(), on_demand=False)
    assert db.get_serial("six") is None
    assert temp_files(repo) == []


def test_load_index_files(repo: Repo, db: Database) -> None:
    assert load_index_files(repo, "six") is None
    rendered = save_project(repo, db, six_body(), on_demand=False)
    files = load_index_files(repo, "six")
    assert files == list(rendered.files)
    assert files is not None and len(files) == 48


def test_delete_project_pages(repo: Repo, db: Database) -> None:
    save_project(repo, db, six_body(), on_demand=False)
    save_project(repo, db, (DATA / "flask-login" / "pypi.json").read_bytes(), on_demand=False)

    delete_project_pages(repo, db, "six")

    assert not repo.project_dir("six").exists()
    assert not repo.pypi_json("six").exists()
    assert db.get_serial("six") is None
    assert load_index_files(repo, "six") is None
    # Other projects are untouched; deleting twice is harmless.
    assert repo.project_html("flask-login").is_file()
    assert db.get_serial("flask-login") is not None
    delete_project_pages(repo, db, "six")
    assert repo.simple_dir.is_dir()


def test_scan_tier_same_files_with_one_or_many_threads(tmp_path: Path) -> None:
    """The threaded walk (sampled first, then a pool) finds exactly what a plain walk finds."""
    repo = Repo(config_from_dict({"repo_path": str(tmp_path / "repo")}))
    repo.create_folders()
    expected = set()
    for i in range(60):  # more top-level folders than the sample, so the pool runs too
        path = f"{i:02x}/{(i * 7) % 256:02x}/{i:060x}/pkg{i}-1.0.tar.gz"
        target = repo.tier_file(0, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
        expected.add(path)
    assert set(repo.scan_tier(0, workers=1)) == expected
    many = list(repo.scan_tier(0, workers=16))
    assert sorted(many) == sorted(expected)
