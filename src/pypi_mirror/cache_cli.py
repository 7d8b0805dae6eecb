"""``pypi-mirror cache purge`` and ``pypi-mirror cache prewarm``: the file cache by hand.

Both take the cache lock that `sync` holds while it manages the cache (waiting up to
``--wait`` seconds, then giving up with exit status 1), so neither works from a picture of the
tiers that a running sync is changing. A running `serve` needs no telling: it checks a local
file with lstat(2) on every request, so a purged file is not served from that moment on; the
descriptors it keeps open for large files are swept every 5 seconds, which is when the disk
space of a purged file that was being served comes back.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from pypi_mirror.cli import config_option, load_or_exit, ready_or_exit, setup_logging
from pypi_mirror.cli import verbose_option as _verbose_option
from pypi_mirror.names import is_valid_project_name, normalize

EXIT_FAILED = 1
DEFAULT_WAIT = 60.0

wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=DEFAULT_WAIT,
    show_default=True,
    help="Seconds to wait while a sync manages the cache, then give up (exit 1).",
)


@click.group()
def cache() -> None:
    """Act on the file cache now: purge a project's files, pre-warm from lock files, pin."""


def _lock_refused() -> None:
    click.echo(
        "pypi-mirror cache: a sync is managing the cache (its lock is held); nothing done. "
        "Try again when it has finished, or raise --wait.",
        err=True,
    )
    sys.exit(EXIT_FAILED)


@cache.command()
@click.argument("name")
@click.option("--version", "version", metavar="V", help="Only the files of this release.")
@click.option("--file", "filename", metavar="F", help="Only this file (its filename).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@wait_option
@config_option
@_verbose_option
def purge(
    name: str,
    version: str | None,
    filename: str | None,
    dry_run: bool,
    wait: float,
    config_path: Path | None,
    verbose: bool,
) -> None:
    """Remove NAME's cached files from every tier and the database, and its pages (they are
    fetched again by the next sync or request). For incident response: takes effect at once.

    Exits 0 when everything selected was removed, 1 naming each file that could not be."""
    if not is_valid_project_name(name):
        raise click.BadParameter(f"not a project name: {name!r}", param_hint="NAME")
    if filename is not None and ("/" in filename or filename in (".", "..")):
        raise click.BadParameter("a filename, not a path", param_hint="--file")
    setup_logging(verbose)
    config = load_or_exit(config_path)
    ready_or_exit(config, "dry-run" if dry_run else "sync")
    from pypi_mirror.cache.lock import cache_lock
    from pypi_mirror.cache.purge import Selection, purge
    from pypi_mirror.db import Database
    from pypi_mirror.repo import Repo

    repo = Repo(config)
    selection = Selection(normalize(name), version, filename)
    with cache_lock(config, repo, wait, "cache") as held:
        if not held:
            _lock_refused()
        db = Database.open(config.store, "cache")
        try:
            result = purge(repo, db, selection, dry_run=dry_run)
        finally:
            db.close()
    verb = "would remove" if dry_run else "removed"
    for item in result.removed:
        click.echo(f"{verb} {item.path} (tier {item.tier}, {item.size:,} bytes)")
    for failure in result.failed:
        click.echo(f"could not remove {failure}", err=True)
    click.echo(result.summary(dry_run=dry_run))
    sys.exit(EXIT_FAILED if result.failed else 0)


@cache.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@wait_option
@config_option
@_verbose_option
def prewarm(files: tuple[Path, ...], wait: float, config_path: Path | None, verbose: bool) -> None:
    """Download every file that FILES name into the cache now, verified against their hashes.

    FILES: requirements files with --hash options (-r includes followed), uv.lock or PEP 751
    pylock.toml. Exits 0 when every file is cached, 1 naming each that failed."""
    setup_logging(verbose)
    config = load_or_exit(config_path)
    ready_or_exit(config, "sync")
    from pypi_mirror.cache.lock import cache_lock
    from pypi_mirror.cache.lockfiles import LockFileError, Wanted, parse_file
    from pypi_mirror.cache.prewarm import prewarm as run_prewarm
    from pypi_mirror.db import Database
    from pypi_mirror.repo import Repo

    wanted: list[Wanted] = []
    skipped: list[str] = []
    for path in files:
        try:
            parsed = parse_file(path)
        except LockFileError as error:
            click.echo(f"pypi-mirror cache prewarm: {error}", err=True)
            sys.exit(EXIT_FAILED)
        wanted.extend(parsed.wanted)
        skipped.extend(parsed.skipped)
    repo = Repo(config)
    repo.create_folders()
    with cache_lock(config, repo, wait, "cache") as held:
        if not held:
            _lock_refused()
        db = Database.open(config.store, "cache")
        try:
            result = asyncio.run(run_prewarm(config, repo, db, wanted, progress_bar=None))
        finally:
            db.close()
    result.skipped[:0] = skipped
    for path, tier, size in result.downloaded:
        click.echo(f"downloaded {path} (tier {tier}, {size:,} bytes)")
    for reason in result.skipped:
        click.echo(f"skipped {reason}")
    for reason in result.failed:
        click.echo(f"failed {reason}", err=True)
    click.echo(result.summary())
    sys.exit(EXIT_FAILED if result.failed else 0)


def _valid_specs(specs: tuple[str, ...]) -> list[str]:
    from pypi_mirror.cache.pins import parse_pin

    for spec in specs:
        try:
            parse_pin(spec)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="SPEC") from None
    return list(specs)


@cache.command()
@click.argument("specs", metavar="SPEC...", nargs=-1, required=True)
@click.option("--all-versions", is_flag=True, help="Every matching release, not only the newest.")
@config_option
@_verbose_option
def pin(
    specs: tuple[str, ...], all_versions: bool, config_path: Path | None, verbose: bool
) -> None:
    """Keep the files of SPEC (a project name or requirement, e.g. "torch>=2.3") in the hottest
    tier whatever their votes; the next sync downloads them. By default only the newest
    matching release is pinned."""
    checked = _valid_specs(specs)
    setup_logging(verbose)
    config = load_or_exit(config_path)
    from pypi_mirror.cache.pins import add_pins
    from pypi_mirror.db import Database

    db = Database.open(config.store, "cache")
    try:
        added = add_pins(db, checked, all_versions=all_versions)
    finally:
        db.close()
    for spec in checked:
        click.echo(f"{'pinned' if spec in added else 'already pinned'} {spec}")
    click.echo("the next sync downloads the pinned files into tier 0")


@cache.command()
@click.argument("specs", metavar="SPEC...", nargs=-1, required=True)
@config_option
@_verbose_option
def unpin(specs: tuple[str, ...], config_path: Path | None, verbose: bool) -> None:
    """Forget pins added with `cache pin`; from the next sync their files compete with their
    votes again. Exits 1 when a SPEC was not pinned from the command line."""
    checked = _valid_specs(specs)
    setup_logging(verbose)
    config = load_or_exit(config_path)
    from pypi_mirror.cache.pins import remove_pins
    from pypi_mirror.db import Database

    db = Database.open(config.store, "cache")
    try:
        removed, missing = remove_pins(db, checked)
    finally:
        db.close()
    for spec in removed:
        click.echo(f"unpinned {spec}")
    for spec in missing:
        in_config = spec in config.cache.pin
        where = " (it is in the config's cache.pin: edit the config)" if in_config else ""
        click.echo(f"not pinned from the command line: {spec}{where}", err=True)
    sys.exit(EXIT_FAILED if missing else 0)


@cache.command("pins")
@config_option
@_verbose_option
def list_pins(config_path: Path | None, verbose: bool) -> None:
    """List the pins, from the config (cache.pin) and from `cache pin`, in the order they take
    tier 0's space."""
    setup_logging(verbose)
    config = load_or_exit(config_path)
    from pypi_mirror.cache.pins import all_pins
    from pypi_mirror.db import Database

    db = Database.open(config.store, "cache")
    try:
        pins = all_pins(config, db)
    finally:
        db.close()
    if not pins:
        click.echo("no pins")
    for item in pins:
        scope = "all matching versions" if item.all_versions else "newest matching version"
        click.echo(f"{item.spec}\t{item.source}\t{scope}")
