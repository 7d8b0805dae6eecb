"""Shared fixtures. The fake upstream PyPI is in tests/fakepypi.py."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakepypi import FakePyPI
from tests.pgserver import PostgresServer, find_bindir, make_base_dir


@pytest.fixture
def fake_pypi() -> Iterator[FakePyPI]:
    """A running fake upstream PyPI on 127.0.0.1, empty; stopped after the test."""
    with FakePyPI() as fake:
        yield fake


def _postgres_bindir() -> Path:
    """Skip (or, under PYPI_MIRROR_REQUIRE_POSTGRES=1 as `make test` sets when it installed
    the server, fail) where no PostgreSQL server binaries exist."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries not found: install Debian's postgresql package"
        if os.environ.get("PYPI_MIRROR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (PYPI_MIRROR_REQUIRE_POSTGRES=1 is set)", pytrace=False)
        pytest.skip(reason)
    return bindir


@contextlib.contextmanager
def _started_server() -> Iterator[PostgresServer]:
    bindir = _postgres_bindir()  # before making a directory a skip would leave behind
    server = PostgresServer(make_base_dir(), bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (tests get databases via pg_url)."""
    with _started_server() as server:
        yield server


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database of its own for this test; dropped afterwards."""
    if not postgres_server.is_running:  # a test stopped the shared server: bring it back
        postgres_server.start()
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def pg_server_private() -> Iterator[PostgresServer]:
    """A started server of this test's own, for tests that stop, kill or restart it."""
    with _started_server() as server:
        yield server
