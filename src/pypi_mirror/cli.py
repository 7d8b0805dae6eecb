"""Command line: ``pypi-mirror serve``, ``sync``, ``check``, ``status``, ``simulate``, ``cache``
and ``db``.

Exit status 2 means nothing was started: a bad configuration, or an environment it cannot
work in (preflight.py); each message names the configuration key.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from pypi_mirror import __version__
from pypi_mirror.config import Config, ConfigError, load_config, parse_listen
from pypi_mirror.preflight import Command, preflight

log = logging.getLogger("pypi_mirror")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


EXIT_CONFIG = 2


def load_or_exit(
    config_path: Path | None, listen: str | None = None, repo_path: Path | None = None
) -> Config:
    overrides: dict[str, str] = {}
    if listen is not None:
        overrides["listen"] = listen
    if repo_path is not None:
        overrides["repo_path"] = str(repo_path)
    try:
        return load_config(config_path, overrides)
    except ConfigError as error:
        click.echo(f"pypi-mirror: configuration error: {error}", err=True)
        sys.exit(EXIT_CONFIG)


def ready_or_exit(config: Config, command: Command) -> None:
    """Stop before anything starts or is written when the environment cannot work."""
    problems = preflight(config, command)
    for problem in problems:
        click.echo(f"pypi-mirror: configuration error: {problem}", err=True)
    if problems:
        sys.exit(EXIT_CONFIG)


def _check_listen(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_listen(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return value


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML configuration file (default: ./config.yaml, else the embedded default).",
)
verbose_option = click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
listen_option = click.option(
    "--listen",
    metavar="HOST:PORT",
    callback=_check_listen,
    help='Listen address, overriding the config\'s `listen` (e.g. "127.0.0.1:8080", ":8080").',
)
repo_path_option = click.option(
    "--repo-path",
    type=click.Path(path_type=Path),  # a wrong kind of path is reported by preflight
    default=None,
    help="Mirror data folder, overriding the config's `repo_path`.",
)


class _Commands(click.Group):
    """A database that fails under a command (PostgreSQL unreachable, a disk full under the
    SQLite file) is reported in one line, not as a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        from pypi_mirror.db import STORE_ERRORS

        try:
            return super().invoke(ctx)
        except STORE_ERRORS as error:
            click.echo(f"pypi-mirror: database error: {str(error).strip()}", err=True)
            sys.exit(1)


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="pypi-mirror")
def main() -> None:
    """A partial PyPI mirror with popularity-based cache management."""


@main.command()
@config_option
@listen_option
@repo_path_option
@verbose_option
def serve(
    config_path: Path | None, listen: str | None, repo_path: Path | None, verbose: bool
) -> None:
    """Serve the simple index, JSON metadata and files; fall back to the upstream."""
    setup_logging(verbose)
    config = load_or_exit(config_path, listen, repo_path)
    ready_or_exit(config, "serve")
    from pypi_mirror.server.run import run_server

    sys.exit(run_server(config))


@main.command()
@config_option
@listen_option
@repo_path_option
@verbose_option
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
def sync(
    config_path: Path | None,
    listen: str | None,
    repo_path: Path | None,
    verbose: bool,
    dry_run: bool,
) -> None:
    """Sync the index from the upstream, then manage the file cache (run to completion).

    --listen is accepted so that serve and sync take the same options; sync does not
    listen."""
    setup_logging(verbose)
    config = load_or_exit(config_path, listen, repo_path)
    ready_or_exit(config, "dry-run" if dry_run else "sync")
    from pypi_mirror.sync_job import run_sync

    sys.exit(run_sync(config, dry_run=dry_run))


@main.command()
@config_option
@listen_option
@repo_path_option
@verbose_option
@click.option("--offline", is_flag=True, help="Skip the upstream checks.")
def check(
    config_path: Path | None,
    listen: str | None,
    repo_path: Path | None,
    verbose: bool,
    offline: bool,
) -> None:
    """Check the configuration and the environment; change nothing.

    Folders writable, cache tiers distinct and apart from the index, the access log
    writable, the listen port free, the upstream reachable (a few requests, 5 s each).
    Prints one line per check; exits 0 when all pass, 1 when any fails, 2 when the
    configuration itself is invalid."""
    setup_logging(verbose)
    config = load_or_exit(config_path, listen, repo_path)
    from pypi_mirror.check import report, run_check

    text, status = report(run_check(config, upstream=not offline))
    click.echo(text)
    sys.exit(status)


@main.command()
@config_option
@repo_path_option
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def status(config_path: Path | None, repo_path: Path | None, verbose: bool, as_json: bool) -> None:
    """Print the mirror's status: index freshness, cache tiers, traffic and hit rate, the
    most-voted projects and the last sync runs (from its database: the server need not run).
    Exits 1 when there is no database to read."""
    setup_logging(verbose)
    config = load_or_exit(config_path, None, repo_path)
    from pypi_mirror.status_cli import print_status

    sys.exit(print_status(config, as_json=as_json))


# Last: cache_cli takes its shared options (config_option, …) from this module.
from pypi_mirror.cache_cli import cache  # noqa: E402
from pypi_mirror.db_cli import db  # noqa: E402

main.add_command(cache)
main.add_command(db)


def _sizes(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    from pypi_mirror.config import parse_size

    if value is None:
        return None
    try:
        return [parse_size(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _policies(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    from pypi_mirror.cache.plan import SCORERS

    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in SCORERS]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or value!r}: use {', '.join(SCORERS)}")
    return names


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    from pypi_mirror.config import parse_duration

    try:  # a bare number is seconds ("--warmup 0")
        return parse_duration(float(value) if value.replace(".", "", 1).isdigit() else value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@main.command()
@click.argument(
    "logs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@config_option
@verbose_option
@click.option(
    "--budget",
    callback=_sizes,
    help="Cache sizes to try, e.g. 100g,500g (default: the config's tiers, or size_limit).",
)
@click.option(
    "--policy",
    default="votes,per-byte",
    show_default=True,
    callback=_policies,
    help="cache.policy values to try.",
)
@click.option(
    "--sync-every",
    default="1h",
    show_default=True,
    callback=_duration,
    help="Log time between two plans (how often sync runs).",
)
@click.option(
    "--warmup",
    default="1d",
    show_default=True,
    callback=_duration,
    help="Log time left out of the rates (reported apart); 0 counts it.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the rows as JSON to this file.",
)
def simulate(
    logs: tuple[Path, ...],
    config_path: Path | None,
    verbose: bool,
    budget: list[int] | None,
    policy: list[str],
    sync_every: float,
    warmup: float,
    json_path: Path | None,
) -> None:
    """Replay request logs through the vote rules and the cache plan: hit rates per budget
    and policy.

    LOG: this mirror's access log (mirror-json or combined) or a JSON-lines trace
    ({"t","ip","path","size","ua"}); .xz and .gz are read as they are. Nothing is written
    but --json; the database (for sizes the logs do not give) is only read."""
    setup_logging(verbose)
    if sync_every <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--sync-every")
    config = load_or_exit(config_path)
    from pypi_mirror.simulate_cli import run_simulation, table, tier_limits, write_json

    budgets = [(size,) for size in budget] if budget else [tier_limits(config)]
    requests, runs, timings = run_simulation(
        config, logs, budgets=budgets, policies=policy, sync_every=sync_every, warmup=warmup
    )
    if not len(requests):
        click.echo("pypi-mirror: no file downloads in the logs", err=True)
        sys.exit(1)
    click.echo(table(requests, runs, timings))
    if json_path is not None:
        write_json(json_path, runs)
