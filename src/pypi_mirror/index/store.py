"""Saving and removing one project's index documents (used by both `serve` and `sync`).

The order is the point: the pages and the JSON API copy land first (each atomically), and only
then does the serial advance, so a crash in between makes the next sync fetch the project again
instead of believing stale pages are current.
"""

from __future__ import annotations

from pypi_mirror.db import Database
from pypi_mirror.index import quarantine
from pypi_mirror.index.render import (
    IndexFile,
    RenderedProject,
    SimpleExtras,
    index_files,
    parse_pypi_json,
    render_project,
)
from pypi_mirror.repo import Repo


def save_project(
    repo: Repo,
    db: Database | None,
    body: bytes,
    *,
    on_demand: bool,
    extras: SimpleExtras | None = None,
) -> RenderedProject:
    """Render ``body`` (a ``/pypi/<name>/json`` response) with ``extras`` (the upstream's
    PEP 691 page, when read), store all three documents, then record the serial the body
    carries (not with ``db`` None: the database is unavailable; the next save records it).
    Raises RenderError (nothing written) on a bad body."""
    rendered = render_project(body, extras)
    if extras is None and rendered.name in quarantine.load(repo.root):
        # Status unknown this time (the page was not read): a recorded quarantine holds.
        rendered = render_project(body, SimpleExtras(status="quarantined"))
    if extras is not None:
        # Before the pages: a quarantined project's files are refused from this moment on.
        # Without extras nothing is known of its status, and a quarantine stays recorded.
        paths = quarantined_paths(body) if rendered.quarantined else None
        quarantine.update(repo.root, rendered.name, paths)
    repo.write_project(rendered.name, body, rendered.html, rendered.json)
    if db is not None:
        db.set_serial(rendered.name, rendered.serial, on_demand=on_demand)
    return rendered


def delete_project_pages(repo: Repo, db: Database, name: str) -> None:
    """Forget a project that is gone upstream: its pages, its JSON copy, its serial."""
    repo.remove_project(name)
    db.delete_serial(name)
    quarantine.update(repo.root, name, None)


def quarantined_paths(body: bytes) -> list[str]:
    """Every file path ``body`` lists (the pages of a quarantined project list none)."""
    return [f.path for f in index_files(parse_pypi_json(body))]


def load_index_files(repo: Repo, name: str) -> list[IndexFile] | None:
    """The files listed in the stored JSON API copy of ``name``; None when it is not stored."""
    body = repo.read_pypi_json(name)
    if body is None:
        return None
    return index_files(parse_pypi_json(body))
