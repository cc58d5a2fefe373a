"""Database fixtures: every DB test runs on a real SQLite file and on the real PostgreSQL server.

PostgreSQL is reached in ONE place, `pg_admin_engine()` (behind the session fixture `pg_server`):
every test that needs the server — `db_url`, `repo`, the results databases of results_data.py,
the cluster test — goes through it. The server is named by $RTGRID_TEST_PG (default
postgresql+psycopg://postgres@127.0.0.1:5432/test); each test gets a throw-away database
`rtgrid_t_<random>`, created over an autocommit connection and dropped afterwards. When the server
is unreachable the PostgreSQL variants are skipped, saying why, unless $RTGRID_REQUIRE_PG=1 (CI
sets it), in which case they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from db.repository import Repository
from db.session import RTGRID_TABLES, open_database, safe_url

__all__ = ["db_backend", "db_url", "pg_server", "repo", "sqlite_at_head"]  # the fixtures conftest.py imports

DEFAULT_TEST_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_ADMIN_URL = os.environ.get("RTGRID_TEST_PG", DEFAULT_TEST_PG)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


class PgServer:
    """Creates and drops the throw-away databases of one test session."""

    def __init__(self, admin: Engine) -> None:
        self.admin = admin
        self.created: list[str] = []

        self.at_head: str | None = None

    def new_database(self) -> str:
        name = f"rtgrid_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def emptied_database_at_head(self) -> str:
        """One database of the session, migrated once and emptied for each test (cheaper than
        CREATE DATABASE, which writes the whole template to the WAL)."""
        if self.at_head is None:
            self.at_head = self.new_database()
            open_database(self.at_head, create=True).dispose()
        engine = create_engine(self.at_head, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"TRUNCATE {', '.join(RTGRID_TABLES)} RESTART IDENTITY CASCADE")
        finally:
            engine.dispose()
        return self.at_head

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as connection:
            # FORCE: engines a test forgot to dispose must not keep the database alive.
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop(make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False))


def pg_required() -> bool:
    """$RTGRID_REQUIRE_PG=1 (CI): an unreachable server fails the PostgreSQL tests instead of skipping them."""
    return os.environ.get("RTGRID_REQUIRE_PG", "").strip() not in ("", "0")


def pg_admin_engine() -> Engine:
    """An AUTOCOMMIT engine on $RTGRID_TEST_PG that has connected once: the one way tests reach PostgreSQL.

    Unreachable server: pytest.skip saying why, or pytest.fail under $RTGRID_REQUIRE_PG=1.
    """
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool,
                          connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except DBAPIError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        message = f"PostgreSQL server unreachable at {safe_url(PG_ADMIN_URL)}: {reason}"
        if pg_required():  # CI: half the suite must not vanish as skips
            pytest.fail(message)
        pytest.skip(message)
    return admin


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer(pg_admin_engine())
    admin = server.admin
    yield server
    server.drop_all()
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def db_url(db_backend: str, tmp_path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty database (no tables, no schema revision)."""
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'rtgrid.sqlite'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.new_database()
    yield url
    server.drop(url)


@pytest.fixture(scope="session")
def sqlite_at_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db-template") / "head.sqlite"
    open_database(f"sqlite:///{path}", create=True).dispose()  # the last connection folds the WAL in
    return path


@pytest.fixture()
def repo(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Repository]:
    """A Repository on an empty database at head (SQLite: a copy of a file migrated once per session;
    PostgreSQL: the session's database, truncated)."""
    if db_backend == "sqlite":
        path = tmp_path / "rtgrid.sqlite"
        shutil.copyfile(request.getfixturevalue("sqlite_at_head"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_server").emptied_database_at_head()
    repository = Repository(open_database(url, create=False))
    yield repository
    repository.close()
