"""Engines from URLs, SQLite/PostgreSQL settings, and the schema check on open.

Read-only engines (`rtgrid query`, `export`, `report`, `plot`) are db/readonly.py's.

A database is migrated only on request (`rtgrid db upgrade`) or when it is brand new and the
command writes; an existing database behind the code's schema is an error, never migrated
silently. Errors are one-line `DatabaseError`s that never show a password.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

import migrations
from db.errors import DatabaseError, SchemaOutOfDate, one_line
from db.models import Base

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # alembic is imported when first needed
    from alembic.config import Config
    from alembic.script import ScriptDirectory

DEFAULT_URL = "sqlite:///rtgrid.sqlite"
SCRIPT_LOCATION = str(Path(migrations.__file__).resolve().parent)
# Tables whose presence without an alembic_version row means "an rtgrid database we cannot place".
RTGRID_TABLES = frozenset(Base.metadata.tables)
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK_ID = 0x72746772  # "rtgr": one rtgrid migration at a time per PostgreSQL server


# --- URLs -------------------------------------------------------------------------------------


def resolve_url(url: str | None = None) -> str:
    """The argument, else $RTGRID_DB, else the default SQLite file in the working directory."""
    return url or os.environ.get("RTGRID_DB") or DEFAULT_URL


def parse_url(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a non-numeric port
        why = "the port must be a number" if isinstance(exc, ValueError) and "int()" in str(exc) else "unparsable"
        raise DatabaseError(f"invalid database URL {safe_url(str(url))!r} ({why}); e.g. "
                            "postgresql://user@host:5432/db or sqlite:///path/rtgrid.sqlite") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database URL {safe_url(parsed)}: rtgrid stores results in SQLite "
                            "(sqlite:///path/rtgrid.sqlite) or PostgreSQL (postgresql://user@host:5432/db)")
    return parsed


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 (the driver rtgrid ships with)."""
    return parse_url(url).render_as_string(hide_password=False)


def safe_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: mask anything between ':' and '@' of the netloc
        logger.debug("unparsable database URL; its password is masked by pattern")  # no exc_info: it holds the URL
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(url: URL) -> str | None:
    """The file of a SQLite URL; None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


# --- engines ----------------------------------------------------------------------------------


def _ensure_wal(cursor: sqlite3.Cursor) -> None:
    """WAL: readers (rtgrid status / query) never block the driver's writes and vice versa.

    The mode is stored in the file, so only the first connection switches it. Switching can
    fail with "locked" without waiting on the busy timeout (two processes opening a new file
    at once), hence the retry loop.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        mode = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode in ("wal", "memory"):
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _ensure_wal(cursor)
        # In WAL mode NORMAL never corrupts and loses nothing when a process dies; only a power
        # cut can drop the last commits, which are replayed (idempotently) by `rtgrid resume`.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def make_engine(url: str | URL) -> Engine:
    """Engine for a rtgrid database URL (SQLite file or PostgreSQL via psycopg 3)."""
    parsed = parse_url(url)
    try:
        if is_sqlite(parsed):
            engine = create_engine(
                parsed, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"unsupported database URL {safe_url(parsed)}: {one_line(exc)}") from None


# --- Alembic ----------------------------------------------------------------------------------


def alembic_config(script_location: str = SCRIPT_LOCATION, url: str | None = None) -> Config:
    """Alembic configuration built in code: no alembic.ini is needed at run time."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    if url is not None:
        config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


@lru_cache(maxsize=8)
def _script(script_location: str) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(script_location))


def head_revision(script_location: str = SCRIPT_LOCATION) -> str:
    """The schema revision this rtgrid needs."""
    head = _script(script_location).get_current_head()
    assert head is not None, f"no migrations under {script_location}"
    return head


def known_revisions(script_location: str = SCRIPT_LOCATION) -> set[str]:
    return {script.revision for script in _script(script_location).walk_revisions()}


def _revision_of(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def current_revision(engine: Engine | str) -> str | None:
    """The database's schema revision; None for a new (or missing SQLite) database."""
    owned = not isinstance(engine, Engine)
    url = parse_url(engine) if not isinstance(engine, Engine) else engine.url
    path = sqlite_path(url) if is_sqlite(url) else None
    if path is not None and not Path(path).exists():
        return None  # do not create the file just to look
    bound = make_engine(url) if not isinstance(engine, Engine) else engine
    try:
        with bound.connect() as connection:
            return _revision_of(connection)
    except DBAPIError as exc:
        raise DatabaseError(f"cannot open database {safe_url(url)}: {one_line(exc)}") from None
    finally:
        if owned:
            bound.dispose()


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for a whole migration run, serialised against other rtgrid processes."""
    with engine.connect() as connection:
        sqlite = is_sqlite(engine.url)
        if sqlite:
            # A table rebuild (batch migration) must not fire ON DELETE CASCADE; the pragma is a
            # no-op inside a transaction, so it is switched before BEGIN and checked after.
            # legacy_alter_table: renaming the rebuilt table must not trip over the `results` view.
            connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
            connection.exec_driver_sql("PRAGMA legacy_alter_table = ON")
            connection.commit()
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
        try:
            yield connection
            if sqlite:
                problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise DatabaseError(f"migration left {len(problems)} rows with broken foreign keys")
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA legacy_alter_table = OFF")
                connection.exec_driver_sql("PRAGMA foreign_keys = ON")
                connection.commit()


def _migrate(url_or_engine: str | Engine, revision: str, script_location: str, direction: str) -> None:
    from alembic import command
    from alembic.util import CommandError

    owned = not isinstance(url_or_engine, Engine)
    engine = make_engine(url_or_engine) if owned else url_or_engine  # type: ignore[arg-type]
    assert isinstance(engine, Engine)
    safe = safe_url(engine.url)
    try:
        with migration_transaction(engine) as connection:
            config = alembic_config(script_location)
            config.attributes["connection"] = connection
            getattr(command, direction)(config, revision)
    except CommandError as exc:
        raise DatabaseError(f"cannot {direction} {safe}: {one_line(exc)}") from None
    except DBAPIError as exc:
        raise DatabaseError(f"cannot {direction} {safe}: {one_line(exc)}") from None
    finally:
        if owned:
            engine.dispose()


def upgrade(url_or_engine: str | Engine, revision: str = "head", *, script_location: str = SCRIPT_LOCATION) -> None:
    """Migrate to `revision` (creates a new database). Safe to run from several processes at once."""
    _migrate(url_or_engine, revision, script_location, "upgrade")


def downgrade(url_or_engine: str | Engine, revision: str, *, script_location: str = SCRIPT_LOCATION) -> None:
    """Migrate down to `revision` ("base" drops every rtgrid table). For developers and tests."""
    _migrate(url_or_engine, revision, script_location, "downgrade")


# --- opening ----------------------------------------------------------------------------------


def missing_database_message(safe: str) -> str:
    return f"no rtgrid database at {safe} (run a command that writes, or `rtgrid db upgrade`)"


def schema_at_head(engine: Engine, safe: str, script_location: str) -> bool:
    """True at head, False for a new (empty) database; DatabaseError / SchemaOutOfDate otherwise.

    The one schema check of every opener (writers and read-only readers alike).
    """
    try:
        with engine.connect() as connection:
            current = _revision_of(connection)
            tables = set(inspect(connection).get_table_names())
    except DBAPIError as exc:
        raise DatabaseError(f"cannot open database {safe}: {one_line(exc)}") from None
    head = head_revision(script_location)
    if current == head:
        return True
    if current is None:
        if tables & RTGRID_TABLES:
            raise DatabaseError(f"database {safe} has rtgrid tables but no schema revision (alembic_version is empty)")
        return False
    if current in known_revisions(script_location):
        raise SchemaOutOfDate(
            f"database is at revision {current} but rtgrid needs {head}: run `rtgrid db upgrade --db {safe}`"
        )
    raise SchemaOutOfDate(
        f"database is at revision {current}, which this rtgrid does not know (written by a newer rtgrid?); "
        f"it needs {head}: upgrade rtgrid, or use another database"
    )


def open_database(url: str, *, create: bool, script_location: str = SCRIPT_LOCATION) -> Engine:
    """Engine for a rtgrid database whose schema is at head.

    A new (empty) database is created at head when `create`; otherwise, and for a database at
    another revision, a one-line DatabaseError / SchemaOutOfDate says what to run.
    """
    parsed = parse_url(url)
    safe = safe_url(parsed)
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path is not None and not create and not Path(path).exists():
            raise DatabaseError(missing_database_message(safe))
    engine = make_engine(parsed)
    try:
        at_head = schema_at_head(engine, safe, script_location)
    except BaseException:
        engine.dispose()
        raise
    if at_head:
        return engine
    if not create:
        engine.dispose()
        raise DatabaseError(missing_database_message(safe))
    logger.info("new database %s: creating the schema at revision %s", safe, head_revision(script_location))
    upgrade(engine, "head", script_location=script_location)
    return engine
