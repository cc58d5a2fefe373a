"""Everything that makes a connection read-only: `rtgrid query`, `export`, `report` and `plot` read through it.

Layers (orchestrator/results/query.py puts them together and words the refusals for users):
1. the engine cannot write (`open_readonly`): SQLite is opened `mode=ro` (immutable on read-only media) with
   `PRAGMA query_only` and an authorizer that denies ATTACH/DETACH; PostgreSQL sessions default to READ ONLY
   transactions, and `begin_read_only` takes each transaction's snapshot at once so it cannot be switched
   back, with the statement timeout set inside it;
2. user SQL on PostgreSQL goes through db/pg_guard.py: the server's own parser (pglast) and an allow-list
   of statements, node types, functions, types and relations (`check_user_sql`);
3. user SQL on SQLite runs under `strict_authorizer`: every action but reading is denied (no PRAGMA writes,
   DDL, DML) and the file / extension functions of SQLITE_DENIED_FUNCTIONS.
A refusal is a one-line `ReadOnlyViolation` (a ValueError); this module knows nothing of the CLI.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine

from db import pg_guard
from db.errors import DatabaseError, ReadOnlyViolation
from db.models import RESULTS_VIEW
from db.session import (
    PG_CONNECT_TIMEOUT_S,
    RTGRID_TABLES,
    SCRIPT_LOCATION,
    SQLITE_BUSY_TIMEOUT_MS,
    is_sqlite,
    missing_database_message,
    parse_url,
    safe_url,
    schema_at_head,
    sqlite_path,
)
from db.timeouts import pg_timeout_sql

__all__ = ["ReadOnlyViolation", "check_user_sql", "open_readonly", "strict_sqlite"]

MAX_USER_SQL_CHARS = 20_000
# What a user's query may read on PostgreSQL (besides its CTEs and information_schema).
READABLE_RELATIONS = frozenset({*RTGRID_TABLES, RESULTS_VIEW, "alembic_version"})

# SQLite PRAGMAs that only read; only the schema-introspection ones may take an argument.
READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list", "table_list",
    "database_list", "collation_list", "function_list", "pragma_list", "compile_options", "user_version",
    "schema_version", "application_id", "page_count", "page_size", "freelist_count", "encoding", "journal_mode",
    "foreign_keys", "query_only", "busy_timeout", "data_version",
})
PRAGMAS_WITH_ARGUMENT = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list", "table_list",
})
# SQLite functions that reach the file system or load code (the sqlite3 shell's and extensions').
SQLITE_DENIED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension", "readfile", "writefile", "edit"})


# --- placeholders in rtgrid's own SQL (never the user's: that goes through check_user_sql) --------

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _scan(sql: str) -> Iterator[tuple[str, str]]:
    """(kind, text) tokens of rtgrid's own SQL: 'code' runs, 'string', 'name' (quoted identifier), 'comment', ';'."""
    i, n, start = 0, len(sql), 0
    while i < n:
        ch = sql[i]
        end: int | None = None
        kind = ""
        if ch == "-" and sql.startswith("--", i):
            kind, stop = "comment", sql.find("\n", i)
            end = n if stop < 0 else stop + 1
        elif ch == "/" and sql.startswith("/*", i):
            kind, stop = "comment", sql.find("*/", i + 2)
            if stop < 0:
                raise ReadOnlyViolation("query refused: unterminated /* comment")
            end = stop + 2
        elif ch in ("'", '"', "`"):
            kind = "string" if ch == "'" else "name"
            j = i + 1
            while True:
                stop = sql.find(ch, j)
                if stop < 0:
                    raise ReadOnlyViolation(f"query refused: unterminated {ch} quote")
                if sql.startswith(ch * 2, stop):  # doubled quote = escaped quote
                    j = stop + 2
                    continue
                end = stop + 1
                break
            # E'...' (PostgreSQL) allows backslash escapes; treat \' as escaped too.
            if kind == "string" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum()):
                j = i + 1
                while j < n:
                    if sql[j] == "\\":
                        j += 2
                        continue
                    if sql[j] == "'":
                        if sql.startswith("''", j):
                            j += 2
                            continue
                        break
                    j += 1
                if j >= n:
                    raise ReadOnlyViolation("query refused: unterminated ' quote")
                end = j + 1
        elif ch == "[":
            stop = sql.find("]", i)
            if stop < 0:
                raise ReadOnlyViolation("query refused: unterminated [ name")
            kind, end = "name", stop + 1
        elif ch == "$":
            match = _DOLLAR_TAG.match(sql, i)
            if match and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                tag = match.group(0)
                stop = sql.find(tag, match.end())
                if stop < 0:
                    raise ReadOnlyViolation("query refused: unterminated $-quoted string")
                kind, end = "string", stop + len(tag)
        elif ch == ";":
            kind, end = ";", i + 1
        if end is None:
            i += 1
            continue
        if start < i:
            yield "code", sql[start:i]
        yield kind, sql[i:end]
        i = start = end
    if start < n:
        yield "code", sql[start:]


def check_user_sql(sql: str, dialect: str) -> str:
    """The user's statement if it may run; one-line ReadOnlyViolation otherwise.

    PostgreSQL: the parser and allow-list of db/pg_guard.py. SQLite: the strict authorizer decides at
    prepare time (and sqlite3 runs one statement at a time), so the text only has to be non-empty."""
    if not sql.strip():
        raise ReadOnlyViolation("query refused: no SQL statement given")
    if len(sql) > MAX_USER_SQL_CHARS:
        # bounds the parser's work and depth (libpg_query crashes rather than refuses some very deep trees)
        raise ReadOnlyViolation(f"query refused: the statement has {len(sql):,} characters, over rtgrid query's "
                                f"{MAX_USER_SQL_CHARS:,}; use psql as a read-only role for longer SQL (README)")
    if dialect == "postgresql":
        return pg_guard.check_statement(sql, READABLE_RELATIONS)
    return sql


# --- SQLite authorizers -----------------------------------------------------------------------------


def readonly_authorizer(action: int, *_args: Any) -> int:
    """The read-only engine's own authorizer (rtgrid's SQL): everything but ATTACH / DETACH.

    mode=ro protects the database file; ATTACH (and VACUUM INTO, which attaches) could write other files.
    """
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


_SQLITE_READ_ACTIONS = frozenset({
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33),
})


def strict_authorizer(action: int, arg1: str | None, arg2: str | None, *_rest: Any) -> int:
    """Allow reading only; a PRAGMA only from the read list, with an argument only for introspection."""
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in SQLITE_DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
        name = arg1.lower()
        if name in READ_PRAGMAS and (arg2 is None or name in PRAGMAS_WITH_ARGUMENT):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def is_write_refusal(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("readonly", "read-only", "read-write", "read only", "not authorized",
                                   "authorization denied", "query_only", "multiple commands",
                                   "one statement at a time"))


@contextmanager
def strict_sqlite(driver: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`strict_authorizer` for one user statement, then back to `readonly_authorizer` for rtgrid's SQL."""
    driver.set_authorizer(strict_authorizer)
    try:
        yield driver
    finally:
        driver.set_authorizer(readonly_authorizer)


# --- read-only engines ------------------------------------------------------------------------------


def on_read_only_media(path: Path) -> bool:
    """The file lies on a file system mounted read-only (a snapshot, an archive, a read-only share)."""
    try:
        return bool(os.statvfs(path.resolve().parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_readonly(url: str, *, script_location: str = SCRIPT_LOCATION) -> Engine:
    """An engine that can read and never write (for `rtgrid query`, `export`, `report`, `plot`).

    SQLite: the file is opened with `mode=ro` (the database refuses writes). PostgreSQL: every
    transaction of the session is READ ONLY (`default_transaction_read_only`). The schema is
    checked as for writers: a database behind head is refused, an empty one is "no rtgrid database".
    """
    parsed = parse_url(url)
    safe = safe_url(parsed)
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path is None or not Path(path).is_file():
            raise DatabaseError(missing_database_message(safe))
        uri = "file:" + quote(str(Path(path).resolve())) + "?mode=ro"
        if on_read_only_media(Path(path)):
            # No process can write there, and SQLite could not create the -shm file that reading a WAL
            # database needs: read the file as it is (an unfolded -wal file there is not read).
            uri += "&immutable=1"

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
            connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA query_only = ON")
            connection.set_authorizer(readonly_authorizer)
            return connection

        engine = create_engine(parsed, creator=connect)
    else:
        # prepare_threshold=0: every statement goes through the extended protocol, which refuses
        # "SET TRANSACTION READ WRITE; DELETE …" (several statements in one string).
        connect_args = {"options": "-c default_transaction_read_only=on", "prepare_threshold": 0,
                        "connect_timeout": PG_CONNECT_TIMEOUT_S}
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    try:
        at_head = schema_at_head(engine, safe, script_location)
    except BaseException:
        engine.dispose()
        raise
    if not at_head:  # a reader never creates the schema
        engine.dispose()
        raise DatabaseError(missing_database_message(safe))
    return engine


def begin_read_only(driver: Any, timeout_s: float) -> None:
    """A fresh READ ONLY transaction on a psycopg connection whose snapshot is already taken, so that
    `SET TRANSACTION READ WRITE` can no longer succeed in it; the server stops any of its statements
    that runs past `timeout_s`."""
    driver.rollback()
    with driver.cursor() as cursor:
        cursor.execute("SET TRANSACTION READ ONLY")
        cursor.execute(pg_timeout_sql(timeout_s))
        cursor.execute("SELECT 1")  # takes the snapshot: READ WRITE can no longer be set


def named_to_pyformat(sql: str) -> str:
    """`:name` placeholders (the form used here) -> psycopg's `%(name)s`, outside strings."""
    parts = []
    for kind, text in _scan(sql):
        if kind == "code":
            text = text.replace("%", "%%")
            text = re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", text)
        elif kind == "string":
            text = text.replace("%", "%%")
        parts.append(text)
    return "".join(parts)
