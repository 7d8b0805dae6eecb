"""Saving and removing one project's index documents (used by both `serve` and `sync`).

The order is the point: the pages and the JSON API copy land first (each atomically), and only
then does the serial advance, so a crash in between makes the next sync fetch the project again
instead of believing stale pages are current.
"""

from __future__ import annotations

from pypi_mirror.db import Database
from pypi_mirror.index.render import (
    IndexFile,
    RenderedProject,
    index_files,
    parse_pypi_json,
    render_project,
)
from pypi_mirror.repo import Repo


def save_project(repo: Repo, db: Database, body: bytes, *, on_demand: bool) -> RenderedProject:
    """Render ``body`` (a ``/pypi/<name>/json`` response), store all three documents, then
    record the serial the body carries. Raises RenderError (nothing written) on a bad body."""
    rendered = render_project(body)
    repo.write_project(rendered.name, body, rendered.html, rendered.json)
    db.set_serial(rendered.name, rendered.serial, on_demand=on_demand)
    return rendered


def delete_project_pages(repo: Repo, db: Database, name: str) -> None:
    """Forget a project that is gone upstream: its pages, its JSON copy, its serial."""
    repo.remove_project(name)
    db.delete_serial(name)


def load_index_files(repo: Repo, name: str) -> list[IndexFile] | None:
    """The files listed in the stored JSON API copy of ``name``; None when it is not stored."""
    body = repo.read_pypi_json(name)
    if body is None:
        return None
    return index_files(parse_pypi_json(body))
