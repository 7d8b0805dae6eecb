"""Command line: ``pypi-mirror serve`` and ``pypi-mirror sync``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from pypi_mirror import __version__
from pypi_mirror.config import Config, ConfigError, load_config

log = logging.getLogger("pypi_mirror")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def load_or_exit(config_path: Path | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as error:
        click.echo(f"pypi-mirror: configuration error: {error}", err=True)
        sys.exit(2)


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML configuration file (default: ./config.yaml, else the embedded default).",
)
verbose_option = click.option("-v", "--verbose", is_flag=True, help="Debug logging.")


@click.group()
@click.version_option(__version__, prog_name="pypi-mirror")
def main() -> None:
    """A partial PyPI mirror with popularity-based cache management."""


@main.command()
@config_option
@verbose_option
def serve(config_path: Path | None, verbose: bool) -> None:
    """Serve the simple index, JSON metadata and files; fall back to the upstream."""
    setup_logging(verbose)
    config = load_or_exit(config_path)
    from pypi_mirror.server.run import run_server

    sys.exit(run_server(config))


@main.command()
@config_option
@verbose_option
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
def sync(config_path: Path | None, verbose: bool, dry_run: bool) -> None:
    """Sync the index from the upstream, then manage the file cache (run to completion)."""
    setup_logging(verbose)
    config = load_or_exit(config_path)
    from pypi_mirror.sync_job import run_sync

    sys.exit(run_sync(config, dry_run=dry_run))
