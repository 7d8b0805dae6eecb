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
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

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
    """What libpq will connect to, as ``postgresql://user@host:port/dbname``: never the
    password, however the URL spells it (``user:pw@``, ``?password=``...)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return redact_loose(url)
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    if ":" in host and "," not in host:
        host = f"[{host}]"
    port = f":{parts['port']}" if parts.get("port") else ""
    dbname = str(parts.get("dbname") or "")
    return f"postgresql://{user}{host}{port}/{dbname}"


def parse_database_url(
    url: str | None, repo_path: Path, password_file: Path | None = None
) -> StoreLocation:
    """Raises ValueError naming what is wrong (the message never contains the password)."""
    url = (url or "").strip()
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if password_file is not None and scheme not in ("postgresql", "postgres"):
        raise ValueError("password_file is only for a postgresql:// url")
    if url in ("", "sqlite://", "sqlite:///"):
        return StoreLocation.sqlite(repo_path / DB_FILENAME)
    if scheme == "sqlite":
        if not rest.startswith("/") or "?" in rest or "#" in rest:
            raise ValueError(
                f'invalid url "{url}": write sqlite:///relative/file.db or '
                "sqlite:////absolute/file.db"
            )
        path = Path(unquote(rest[1:]))
        return StoreLocation.sqlite(path)
    if scheme in ("postgresql", "postgres"):
        shown = redact_loose(url)
        if "#" in url:
            raise ValueError(f'invalid url "{shown}": no # allowed (percent-encode it: %23)')
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
            params = conninfo_to_dict(url)  # libpq's own parser: what a connect would read
        except (ValueError, psycopg.Error):
            raise ValueError(f'invalid url "{shown}": bad host, port or parameter') from None
        if "@" in parts.path or parts.path.count("/") > 1:
            # A password holding "/" cut the URL short: the rest became the database name.
            raise ValueError(
                f'invalid url "{shown}": a "/" or "@" in the password or database name must '
                "be percent-encoded (%2F, %40)"
            )
        if password_file is not None and "password" in params:
            raise ValueError("give the password in the url or in password_file, not both")
        return StoreLocation("postgresql", url=url, password_file=password_file)
    raise ValueError(
        f'invalid url "{redact_loose(url)}": must start with sqlite:// or postgresql://'
    )


def redact_loose(url: str) -> str:
    """For a URL too broken to parse: scheme, then host and path only (whatever precedes the
    last ``@`` and any query may hold a password)."""
    scheme, sep, rest = url.partition("://")
    _credentials, at, host_and_path = rest.rpartition("@")
    shown = host_and_path.split("?", 1)[0].split("#", 1)[0]
    return f"{scheme}{sep}{'***@' if at else ''}{shown}"
