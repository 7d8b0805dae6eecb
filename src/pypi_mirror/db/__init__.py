"""The store: the embedded SQLite file or a shared PostgreSQL, behind one interface."""

from pypi_mirror.db.connection import STORE_ERRORS, is_busy, is_disk_full, is_unreachable
from pypi_mirror.db.location import DB_FILENAME, StoreLocation
from pypi_mirror.db.store import Database, LocalFile, Vote

__all__ = [
    "DB_FILENAME",
    "STORE_ERRORS",
    "Database",
    "LocalFile",
    "StoreLocation",
    "Vote",
    "is_busy",
    "is_disk_full",
    "is_unreachable",
]
