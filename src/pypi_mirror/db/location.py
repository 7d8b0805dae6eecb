"""Where the store lives: ``database.url`` parsed once, and shown without its password.

- absent, ``sqlite://`` or ``sqlite:///`` → the embedded SQLite file ``{repo_path}/pypi-mirror.db``
- ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` → that SQLite file
- ``postgresql://user@host:port/db`` (or ``postgres://``) → PostgreSQL. What the URL leaves
  out libpq takes from the environment (``PGHOST``, ``PGUSER``, ``PGPASSWORD``,
  ``PGPASSFILE``...); ``database.password_file`` supplies the password, read at each connect
  so that a rotated password is picked up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

DB_FILENAME = "pypi-mirror.db"

Backend = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class StoreLocation:
    backend: Backend
    sqlite_path: Path | None = None
    url: str | None = None  # PostgreSQL only: the URL as configured (may carry a password)
    password_file: Path | None = None

    @classmethod
    def sqlite(cls, path: Path) -> StoreLocation:
        return cls("sqlite", sqlite_path=path)

    @property
    def is_postgresql(self) -> bool:
        return self.backend == "postgresql"

    @property
    def display(self) -> str:
        """For logs and messages: never the password."""
        if self.backend == "sqlite":
            return f"SQLite {self.sqlite_path}"
        return f"PostgreSQL {redact(self.url or '')}"

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").strip()


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def parse_database_url(
    url: str | None, repo_path: Path, password_file: Path | None = None
) -> StoreLocation:
    """Raises ValueError naming what is wrong (the message never contains the password)."""
    if url is None or url.strip() in ("", "sqlite://", "sqlite:///"):
        if password_file is not None:
            raise ValueError("password_file is only for a postgresql:// url")
        return StoreLocation.sqlite(repo_path / DB_FILENAME)
    url = url.strip()
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if password_file is not None:
            raise ValueError("password_file is only for a postgresql:// url")
        if not rest.startswith("/") or "?" in rest or "#" in rest:
            raise ValueError(
                f'invalid url "{url}": write sqlite:///relative/file.db or '
                "sqlite:////absolute/file.db"
            )
        path = Path(unquote(rest[1:]))
        return StoreLocation.sqlite(path)
    if scheme in ("postgresql", "postgres"):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f'invalid url "{redact_loose(url)}": bad host or port') from None
        if parts.fragment:
            raise ValueError(f'invalid url "{redact(url)}": no #fragment allowed')
        if password_file is not None and parts.password is not None:
            raise ValueError("give the password in the url or in password_file, not both")
        return StoreLocation("postgresql", url=url, password_file=password_file)
    raise ValueError(
        f'invalid url "{redact_loose(url)}": must start with sqlite:// or postgresql://'
    )


def redact_loose(url: str) -> str:
    """Like ``redact`` for a URL too broken to parse: drops everything before an ``@``."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"
