"""``pypi-mirror db``: the store's own maintenance commands.

``db migrate`` brings the schema to this version's. Every command also migrates on open (one
process at a time, under a lock), so this is for operators who upgrade the schema as a step of
their own: before restarting the serve nodes of a new version, or with a database role that
may change the schema while the nodes' role may not.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pypi_mirror.cli import config_option, load_or_exit, setup_logging, verbose_option

EXIT_FAILED = 1


@click.group()
def db() -> None:
    """The mirror's database (SQLite file or PostgreSQL)."""


@db.command()
@config_option
@verbose_option
def migrate(config_path: Path | None, verbose: bool) -> None:
    """Create the schema, or upgrade it to this version's; says from which version to which."""
    setup_logging(verbose)
    config = load_or_exit(config_path)
    from pypi_mirror.db import STORE_ERRORS, Database
    from pypi_mirror.db.schema import MIGRATIONS

    store = config.store
    try:
        before = Database.schema_version_of(store)
        Database.open(store, "db migrate").close()  # refuses a schema newer than ours
    except STORE_ERRORS as error:
        click.echo(f"{store.display}: cannot migrate: {error}", err=True)
        sys.exit(EXIT_FAILED)
    if before == len(MIGRATIONS):
        click.echo(f"{store.display}: schema version {before}, current; nothing to do")
    else:
        click.echo(f"{store.display}: schema migrated from version {before} to {len(MIGRATIONS)}")
