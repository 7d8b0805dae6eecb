"""The PostgreSQL test fixtures themselves (tests/pgserver.py, tests/conftest.py)."""

from __future__ import annotations

import psycopg
import pytest

from tests.pgserver import PostgresServer


def test_select_one(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.dbname == pg_url.rsplit("/", 1)[1]
        assert conn.info.port != 5432


def test_databases_are_separate_and_dropped(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("pgserver_drop_me")
    # An open connection must not stop the drop (WITH (FORCE) ends it).
    conn = psycopg.connect(url)
    conn.execute("SELECT 1")
    postgres_server.drop_database("pgserver_drop_me")
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(postgres_server.url()) as admin:
        names = [r[0] for r in admin.execute("SELECT datname FROM pg_database").fetchall()]
    assert "pgserver_drop_me" not in names


def test_restart_keeps_port_and_data(pg_server_private: PostgresServer) -> None:
    server = pg_server_private
    url = server.create_database("keep")
    port = server.port
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
    server.restart()
    assert server.port == port and server.url("keep") == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_stopped_server_refuses_then_comes_back(pg_server_private: PostgresServer) -> None:
    server = pg_server_private
    assert server.is_running
    server.stop("immediate")
    assert not server.is_running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url(), connect_timeout=5)
    server.start()
    assert server.is_running
    with psycopg.connect(server.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_close_removes_everything(pg_server_private: PostgresServer) -> None:
    server = pg_server_private
    server.close()
    assert not server.base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url(), connect_timeout=5)
    server.close()  # twice is fine: the fixture closes it again
