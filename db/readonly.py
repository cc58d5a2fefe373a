"""Everything that makes a connection read-only: `rtgrid query`, `export`, `report` and `plot` read through it.

Layers (orchestrator/results/query.py puts them together and words the refusals for users):
1. the engine cannot write (`open_readonly`): SQLite is opened `mode=ro` with `PRAGMA query_only` and
   an authorizer that denies ATTACH/DETACH; PostgreSQL sessions default to READ ONLY transactions,
   and `begin_read_only` takes each transaction's snapshot at once so it cannot be switched back;
2. for user SQL on SQLite, `strict_authorizer` denies every action but reading (no PRAGMA writes,
   DDL, DML) and the file / extension functions of SQLITE_DENIED_FUNCTIONS;
3. the lexical guard `check_read_only`: exactly one statement (a quote- and comment-aware splitter),
   starting with a reading keyword, with no writing keyword, a PRAGMA only from the read list, and no
   call of a PostgreSQL administration / side-effect function (DENIED_FUNCTIONS: the URL's role is
   often a superuser, and a READ ONLY transaction still runs them).
A refusal is a one-line `ReadOnlyViolation` (a ValueError); this module knows nothing of the CLI.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine

from db.errors import DatabaseError
from db.session import (
    PG_CONNECT_TIMEOUT_S,
    SCRIPT_LOCATION,
    SQLITE_BUSY_TIMEOUT_MS,
    is_sqlite,
    missing_database_message,
    parse_url,
    safe_url,
    schema_at_head,
    sqlite_path,
)

READING_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "EXPLAIN", "TABLE", "SHOW", "PRAGMA"})
# Anywhere outside strings, quoted names and comments, these words mean a write (or a way to one).
WRITING_KEYWORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "DROP", "CREATE", "ALTER", "TRUNCATE", "ATTACH", "DETACH",
    "VACUUM", "REINDEX", "GRANT", "REVOKE", "COPY", "CALL", "DO", "LOCK", "REFRESH", "CLUSTER", "DISCARD",
    "LISTEN", "NOTIFY", "PREPARE", "EXECUTE", "DEALLOCATE", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT",
    "BEGIN", "INTO", "SET", "RESET",
})
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
# PostgreSQL functions that act on the server (signals, files, config, locks, replication, other
# databases) or run SQL from a string (query_to_xml, ts_stat), matched as a name followed by "(".
DENIED_FUNCTIONS = re.compile(
    r"pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile\w*|pg_read_file|pg_read_binary_file"
    r"|pg_ls_\w+|pg_stat_file|pg_stat_reset\w*|pg_advisory\w*|pg_try_advisory\w*|pg_notify|pg_create_restore_point"
    r"|pg_switch_wal|pg_switch_xlog|pg_promote|pg_sleep\w*|set_config|lo_\w+|loread|lowrite|dblink\w*"
    r"|pg_logical_\w+|pg_replication_\w+|\w*_replication_slot\w*|pg_file_\w+|pg_backup_\w+|pg_start_backup"
    r"|pg_stop_backup|pg_wal_replay_\w+|pg_log_backend_memory_contexts|query_to_xml\w*|cursor_to_xml\w*|ts_stat",
    re.IGNORECASE,
)
# SQLite functions that reach the file system or load code (the sqlite3 shell's and extensions').
SQLITE_DENIED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension", "readfile", "writefile", "edit"})


class ReadOnlyViolation(ValueError):
    """The statement would (or might) write, or is not exactly one statement. One-line message."""


# --- the lexical guard (both backends) ----------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def _scan(sql: str) -> Iterator[tuple[str, str]]:
    """(kind, text) tokens: 'code' runs, 'string', 'name' (quoted identifier), 'comment', ';'."""
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


def split_statements(sql: str) -> list[str]:
    """The non-empty statements of `sql` (semicolons inside strings/comments do not split)."""
    statements: list[str] = []
    current: list[str] = []
    meaningful = False
    for kind, text in _scan(sql):
        if kind == ";":
            if meaningful:
                statements.append("".join(current).strip())
            current, meaningful = [], False
            continue
        current.append(text)
        if kind != "comment" and text.strip():
            meaningful = True
    if meaningful:
        statements.append("".join(current).strip())
    return statements


def _words(sql: str) -> list[str]:
    words: list[str] = []
    for kind, text in _scan(sql):
        if kind == "code":
            words.extend(w.upper() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text))
    return words


def _call_tokens(sql: str) -> list[tuple[str, str]]:
    """('word' | 'name' | 'other', text) tokens outside comments; 'name' = a quoted identifier's text."""
    tokens: list[tuple[str, str]] = []
    for kind, text in _scan(sql):
        if kind == "code":
            for token in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*|\S", text):
                tokens.append(("word" if token[0].isalpha() or token[0] == "_" else "other", token))
        elif kind == "name":
            tokens.append(("name", text[1:-1].replace(text[0] * 2, text[0])))
        elif kind != "comment":
            tokens.append(("other", text))
    return tokens


def _check_functions(statement: str) -> None:
    """Refuse a call (`name (`, `schema.name(`, `"name"(`) of a DENIED_FUNCTIONS function."""
    tokens = _call_tokens(statement)
    for i, (kind, text) in enumerate(tokens):
        if kind == "name" and i >= 2 and tokens[i - 1][1] == "&" and tokens[i - 2][1].upper() == "U":
            # U&"pg_sl\0065ep": an escaped name the lexical check cannot read
            raise ReadOnlyViolation('query refused: U&"…" identifiers are not allowed in rtgrid query')
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind in ("word", "name") and following == "(" and DENIED_FUNCTIONS.fullmatch(text):
            raise ReadOnlyViolation(f"query refused: {text.lower()}() is not allowed in rtgrid query "
                               "(server administration or side effects)")


def check_read_only(sql: str) -> str:
    """The single statement of `sql` if it only reads; ReadOnlyViolation (one line) otherwise."""
    statements = split_statements(sql)
    if not statements:
        raise ReadOnlyViolation("query refused: no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlyViolation(f"query refused: exactly one statement allowed, got {len(statements)}")
    statement = statements[0]
    words = _words(statement)
    if not words or words[0] not in READING_KEYWORDS:
        first = words[0] if words else "?"
        raise ReadOnlyViolation(f"query refused: rtgrid query is read-only ({first} statements are not allowed; "
                           "use SELECT / WITH / VALUES / EXPLAIN)")
    if words[0] == "PRAGMA":
        _check_pragma(statement)
    writes = [w for w in words if w in WRITING_KEYWORDS]
    if writes:
        raise ReadOnlyViolation(f"query refused: rtgrid query is read-only ({writes[0]} is not allowed)")
    _check_functions(statement)
    return statement


def _check_pragma(statement: str) -> None:
    match = re.fullmatch(r"\s*PRAGMA\s+(?:(\w+)\s*\.\s*)?(\w+)\s*(\(\s*[\w\"'.]+\s*\))?\s*", statement, re.IGNORECASE)
    if match is None or "=" in statement:
        raise ReadOnlyViolation("query refused: rtgrid query is read-only (PRAGMA assignments are not allowed)")
    name, argument = match.group(2).lower(), match.group(3)
    if name not in READ_PRAGMAS or (argument and name not in PRAGMAS_WITH_ARGUMENT):
        raise ReadOnlyViolation(f"query refused: rtgrid query is read-only (PRAGMA {name} is not allowed)")


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
    return any(s in text for s in ("readonly", "read-only", "read-write", "read only", "not authorized", "query_only",
                                   "multiple commands", "one statement at a time"))


@contextmanager
def strict_sqlite(driver: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`strict_authorizer` for one user statement, then back to `readonly_authorizer` for rtgrid's SQL."""
    driver.set_authorizer(strict_authorizer)
    try:
        yield driver
    finally:
        driver.set_authorizer(readonly_authorizer)


# --- read-only engines ------------------------------------------------------------------------------


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


def begin_read_only(driver: Any) -> None:
    """A fresh READ ONLY transaction on a psycopg connection whose snapshot is already taken, so that
    `SET TRANSACTION READ WRITE` can no longer succeed in it."""
    driver.rollback()
    with driver.cursor() as cursor:
        cursor.execute("SET TRANSACTION READ ONLY")
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
