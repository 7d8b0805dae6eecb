"""Configuration: schema, YAML loading, size/duration parsing and the embedded default."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pypi_mirror.db.location import StoreLocation, parse_database_url
from pypi_mirror.filters import FiltersConfig
from pypi_mirror.names import is_valid_project_name, normalize

log = logging.getLogger(__name__)

PYPI_URL = "https://pypi.org"
PYPI_FILES_URL = "https://files.pythonhosted.org"
DEFAULT_CONFIG_PATH = Path("config.yaml")


class ConfigError(Exception):
    """A configuration problem, with a message that names the key and the bad value."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|d|h|m|s)")
_DURATION_UNITS = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}


def parse_size(value: Any) -> int:
    """``512g`` → bytes. Binary multiples; a bare integer is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}")
        return value
    match = _SIZE_RE.match(str(value))
    if match is None:
        raise ValueError(f'invalid size "{value}"')
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[(unit or "").lower()[:1]])


def parse_duration(value: Any) -> float:
    """``1h30m``, ``7d``, ``250ms`` → seconds. A bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value}")
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_RE.match(text, pos)
        if match is None:
            raise ValueError(f'invalid duration "{value}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError(f'invalid duration "{value}"')
    return total


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f'invalid URL "{value}": must start with http:// or https://')
    return value.rstrip("/")


class UpstreamConfig(_Strict):
    pypi_url: str = PYPI_URL
    packages_url: str = PYPI_FILES_URL
    redirect_url: str | None = None
    proxy: str | None = None
    # Where `sync` learns every project's serial: XML-RPC list_packages_with_serial, or the
    # PEP 691 JSON root index whose entries carry `_last-serial`.
    serials_source: Literal["xmlrpc", "simple-json"] = "xmlrpc"
    # A project page fetched on demand by `serve` is refreshed from the upstream once older
    # than this, so a mirror that never runs `sync` is never stale for long.
    page_ttl: Duration = 600.0
    # How often `serve` looks for projects fetched on demand that the root index (/simple/)
    # does not list yet, and rewrites it when there are (without `sync` it is never current).
    root_refresh: Duration = 30.0
    # Also read each changed project's PEP 691 JSON page (one more request per project) for
    # what only it carries: PEP 792 project status, PEP 740 provenance. Off: never asked.
    fetch_simple_json: bool = True

    @field_validator("pypi_url", "packages_url", "redirect_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^(https?|socks5h?|socks4)://[^/\s]+", value):
            raise ValueError(f'invalid proxy URL "{value}": use http://, https:// or socks5://')
        return value

    @property
    def effective_redirect_url(self) -> str:
        return self.redirect_url or self.packages_url


class TlsConfig(_Strict):
    cert: Path
    key: Path


class FallbackRule(_Strict):
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    mode: Literal["302", "proxy"]

    @field_validator("cidr", mode="before")
    @classmethod
    def _cidr(cls, value: Any) -> Any:
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise ValueError(f'invalid CIDR "{value}"') from None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return str(value)


class FallbackConfig(_Strict):
    default: Literal["302", "proxy"] = "302"
    rules: list[FallbackRule] = Field(default_factory=list)

    @field_validator("default", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return str(value)


class TierConfig(_Strict):
    path: Path
    size_limit: Size


class CacheConfig(_Strict):
    size_limit: Size = parse_size("512g")
    filesize_limit: Size = parse_size("4g")
    min_vote_count: int = Field(default=2, ge=1)
    vote_window: Duration = parse_duration("7d")
    dedup_window: Duration = parse_duration("5m")
    size_db_ttl: Duration = parse_duration("2d")
    tiers: list[TierConfig] | None = None
    # How the plan ranks files (cache/plan.py SCORERS): "votes" is SPEC.md's score,
    # "per-byte" ranks by votes per byte held (more request hits, fewer byte hits).
    policy: Literal["votes", "per-byte"] = "votes"
    # Requirement specifiers whose files stay in tier 0 whatever their votes (cache/pins.py).
    pin: list[str] = Field(default_factory=list)

    @field_validator("pin")
    @classmethod
    def _pins(cls, value: list[str]) -> list[str]:
        from pypi_mirror.cache.pins import parse_pin  # imports this module

        for spec in value:
            parse_pin(spec)
        return value


class SyncConfig(_Strict):
    retry: int = Field(default=3, ge=0)
    download_error_threshold: int = Field(default=5, ge=1)
    user_agent: str = "pypi-mirror/1.0"
    concurrent_downloads: int = Field(default=4, ge=1, le=256)
    # A sync that would remove more projects than this aborts before deleting anything.
    max_deletions: int = Field(default=50_000, ge=0)


class PolicyConfig(_Strict):
    # Cooldown: files uploaded less than this long ago are neither listed nor served
    # (server/cooldown.py). Unset: off.
    min_age: Duration | None = None
    # Projects the cooldown does not apply to (names, normalised on load).
    min_age_exempt: list[str] = Field(default_factory=list)

    @field_validator("min_age_exempt")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_valid_project_name(name):
                raise ValueError(f'invalid project name "{name}"')
        return [normalize(name) for name in value]


class LogConfig(_Strict):
    path: str = ""
    format: Literal["mirror-json", "combined"] = "mirror-json"


class TimeoutsConfig(_Strict):
    read: Duration = 30.0
    write: Duration = 120.0
    idle: Duration = 60.0
    upstream: Duration = 60.0


class DatabaseConfig(_Strict):
    # Absent or sqlite:///...: the embedded SQLite file. postgresql://user@host/db: a
    # PostgreSQL shared by several serve nodes (see db/location.py for the forms).
    url: str | None = None
    # A file holding the PostgreSQL password (mode 0600), read at each connect.
    password_file: Path | None = None
    # Votes one serve worker keeps buffered while the database cannot take them; beyond
    # this they are dropped and counted (pypi_mirror_votes_dropped_total).
    vote_buffer: int = Field(default=100_000, ge=1_000, le=10_000_000)


class Config(_Strict):
    listen: str = ":8080"
    repo_path: Path
    prefix: str = "/pypi"
    # The mirror's public base URL (scheme and host, e.g. https://mirror.example.org): file
    # URLs in JSON API answers are built on it. Unset: from each request's Host and scheme.
    public_url: str | None = None
    # Cache-Control max-age (seconds) of the simple index pages, as PyPI sends (600).
    page_max_age: int = Field(default=600, ge=0, le=31_536_000)
    # Server worker processes sharing the port (SO_REUSEPORT); 0 means one per CPU core.
    workers: int = Field(default=0, ge=0, le=256)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    tls: TlsConfig | None = None
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list
    )
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    # Projects denied outright, files kept out of the cache (filters.py).
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError("must be a list of CIDRs")
        networks = []
        for item in value:
            try:
                networks.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise ValueError(f'invalid CIDR "{item}"') from None
        return networks

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        value = value.rstrip("/")
        if not re.fullmatch(
            r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?",
            value,
        ):
            raise ValueError(
                f'invalid public_url "{value}": must be http(s)://host[:port], without a path'
            )
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and (
            not value.startswith("/") or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value)
        ):
            raise ValueError(f'invalid prefix "{value}": must look like /pypi')
        return value

    @model_validator(mode="after")
    def _tiers_exist(self) -> Config:
        tiers = self.cache.tiers or []
        for index, tier in enumerate(tiers):
            if not tier.path.is_dir():
                raise ValueError(
                    f"cache.tiers[{index}].path: folder {str(tier.path)!r} does not exist"
                )
        # As written (absolute, normalised); preflight repeats this on the resolved paths,
        # which also catches two spellings of one folder through a symlink.
        problems = tier_layout_problems(
            Path(os.path.abspath(self.repo_path)),
            [Path(os.path.abspath(tier.path)) for tier in tiers],
        )
        if problems:
            raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
        return self

    @model_validator(mode="after")
    def _database_url(self) -> Config:
        database = self.database
        try:
            parse_database_url(database.url, self.repo_path, database.password_file)
        except ValueError as error:
            raise ValueError(f"database.url: {error}") from None
        if database.password_file is not None and not database.password_file.is_file():
            raise ValueError(
                f"database.password_file: file {str(database.password_file)!r} does not exist"
            )
        return self

    @property
    def store(self) -> StoreLocation:
        """Where the store lives: database.url, or the SQLite file in repo_path."""
        database = self.database
        return parse_database_url(database.url, self.repo_path, database.password_file)

    @property
    def listen_host_port(self) -> tuple[str | None, int]:
        return parse_listen(self.listen)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def tier_layout_problems(repo_path: Path, tiers: list[Path]) -> list[tuple[str, str]]:
    """Why these tier folders cannot work together: (key, message) per problem.

    Two tiers on one folder, or one inside another, would each see the other's files: the
    plan then counts every file twice and deletes the "duplicates" (the whole cache, every
    second run). A tier that overlaps ``{repo_path}/simple`` or ``/json`` would have its
    inventory walk the index and remove the index writers' temporary files.
    """
    problems: list[tuple[str, str]] = []
    for index, path in enumerate(tiers):
        key = f"cache.tiers[{index}].path"
        for other in range(index):
            first = tiers[other]
            if path == first:
                problems.append((key, f"{str(path)!r} is the same folder as cache.tiers[{other}]"))
            elif first in path.parents:
                problems.append((key, f"{str(path)!r} is inside cache.tiers[{other}] ({first})"))
            elif path in first.parents:
                problems.append((key, f"{str(path)!r} contains cache.tiers[{other}] ({first})"))
        for name in ("simple", "json"):
            index_dir = repo_path / name
            if path == index_dir or index_dir in path.parents:
                where = f"{str(path)!r} is in {index_dir}"
            elif path in index_dir.parents:
                where = f"{str(path)!r} contains {index_dir}"
            else:
                continue
            problems.append((key, f"{where}, where sync writes the index (give it its own folder)"))
            break  # a folder that contains one contains both: one message is enough
    return problems


def parse_listen(value: str) -> tuple[str | None, int]:
    """``":8080"`` → (None, 8080); ``"[::]:8080"`` → ("::", 8080)."""
    match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):(\d{1,5})", value.strip())
    if match is None:
        raise ValueError(f'invalid listen address "{value}": use ":8080" or "127.0.0.1:8080"')
    host = match.group(1) or match.group(2) or None
    port = int(match.group(3))
    if not 0 <= port <= 65535:
        raise ValueError(f'invalid port in listen address "{value}"')
    return host, port


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = ""
        for part in item["loc"]:
            if isinstance(part, int):
                location += f"[{part}]"
            elif not str(part).startswith(("function-", "constrained-")):
                location += f".{part}" if location else str(part)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif (
            "input" in item
            and not isinstance(item["input"], dict | list)
            and repr(item["input"]) not in message
        ):
            message += f" (got {item['input']!r})"
        lines.append(f"{location or 'config'}: {message}" if location else message)
    return "; ".join(dict.fromkeys(lines))


def config_from_dict(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None


def default_repo_path() -> Path:
    """Where the embedded default keeps its data: ``$PYPI_MIRROR_HOME`` or ``./data``."""
    return Path(os.environ.get("PYPI_MIRROR_HOME", "data")).resolve()


def embedded_default(overrides: Mapping[str, Any] | None = None) -> Config:
    data = {"repo_path": str(default_repo_path()), "listen": "127.0.0.1:8080", "workers": 0}
    return config_from_dict({**data, **(overrides or {})})


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load ``path``; with no path, ``./config.yaml`` if present, else the embedded default.

    ``overrides`` (top-level keys, e.g. from ``--listen``) replace the file's values before
    validation, so they are checked like the file's own."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {str(path)!r} does not exist")
        config = embedded_default(overrides)
        log.info(
            "no config file: running on the embedded default (repo_path %s, upstream %s)",
            config.repo_path,
            config.upstream.pypi_url,
        )
        return config
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: the top level must be a mapping")
    return config_from_dict({**data, **(overrides or {})})
