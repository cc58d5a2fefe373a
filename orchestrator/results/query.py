"""Read-only SQL over the results database: `rtgrid query`, `--schema`, and the reader reports use.

Read-only by construction, in layers (the machinery is db/readonly.py's and db/pg_guard.py's; this
module puts it together and words its refusals for users):
1. the connection cannot write: SQLite is opened `mode=ro` with `PRAGMA query_only`, PostgreSQL
   runs every statement inside a READ ONLY transaction whose snapshot is already taken (so it
   cannot be switched to read-write);
2. PostgreSQL: the statement is parsed by the server's own parser (pglast) and must be one SELECT /
   VALUES / TABLE / WITH / EXPLAIN made only of allow-listed node types, functions (aggregates, math,
   string, date, JSON, arrays, windows), cast types and relations (rtgrid's tables and views) — the
   URL's role is often a superuser and a READ ONLY transaction still runs side-effect functions;
   it is also prepared server-side, which refuses several commands;
3. SQLite: an authorizer denies every action but reading (no PRAGMA writes, ATTACH, DDL, DML) and
   the file / extension functions (load_extension, readfile, …); sqlite3 runs one statement at a time;
4. every statement runs under the command's time limit (db/timeouts.py): the server cancels it on
   PostgreSQL, a progress handler interrupts it on SQLite.
A refused statement is one `QueryRefused` line; the database is not touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy.engine import URL

from db import readonly, timeouts
from db.errors import QueryTimeout
from db.models import RESULTS_VIEW_COMMENT, Base, results_view_comments
from db.readonly import ReadOnlyViolation
from orchestrator.errors import UserError, one_line
from workers.trainable import METHODS


class QueryRefused(UserError):
    """The statement would (or might) write, or is not exactly one statement."""


@contextmanager
def _refusals() -> Iterator[None]:
    """db.readonly's ReadOnlyViolation, as the user-facing QueryRefused (same one-line message)."""
    try:
        yield
    except ReadOnlyViolation as exc:
        raise QueryRefused(str(exc)) from None


def check_user_sql(sql: str, dialect: str) -> str:
    """The user's statement if it may run on `dialect`; QueryRefused (one line) otherwise."""
    with _refusals():
        return readonly.check_user_sql(sql, dialect)


# --- the read-only connection ----------------------------------------------------------------


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class ReadOnlyDatabase:
    """A database opened so that it can only be read (see the module docstring)."""

    def __init__(self, url: str | None) -> None:
        from db.session import resolve_url, safe_url

        self.url = resolve_url(url)
        self.safe_url = safe_url(self.url)
        self.engine = readonly.open_readonly(self.url)
        self.dialect = self.engine.dialect.name  # "sqlite" | "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    @contextmanager
    def _driver_connection(self) -> Iterator[Any]:
        """The DBAPI connection, in a READ ONLY transaction (PostgreSQL), rolled back afterwards; its
        statements run under the command's time limit."""
        pooled = self.engine.raw_connection()
        try:
            driver: Any = pooled.driver_connection
            if self.dialect == "postgresql":
                readonly.begin_read_only(driver, timeouts.current_limit())
            else:
                timeouts.install_sqlite_deadline(driver).start(timeouts.current_limit())
            yield driver
        finally:
            try:
                pooled.rollback()
            finally:
                pooled.close()

    def _run(self, driver: Any, sql: str, params: Mapping[str, Any] | None, user: bool) -> QueryResult:
        if self.dialect == "sqlite":
            if user:
                with readonly.strict_sqlite(driver):
                    # user SQL gets no parameters: its ? and :name are the user's business (an error)
                    cursor = driver.execute(sql)
                    rows = cursor.fetchall()
            else:
                cursor = driver.execute(sql, dict(params or {}))
                rows = cursor.fetchall()
            columns = [d[0] for d in cursor.description or []]
            return QueryResult(columns, rows)
        with driver.cursor() as cursor:
            if user:
                cursor.execute(sql, None, prepare=True)  # server-side prepare refuses several commands
            else:
                cursor.execute(readonly.named_to_pyformat(sql), dict(params or {}))
            columns = [d.name for d in cursor.description or []]
            rows = cursor.fetchall() if cursor.description else []
        return QueryResult(columns, [tuple(r) for r in rows])

    def execute_user(self, sql: str, *, checked: bool = True) -> QueryResult:
        """Run one user statement. `checked=False` skips the statement guard (tests of the lower layers)."""
        statement = check_user_sql(sql, self.dialect) if checked else sql
        try:
            with self._driver_connection() as driver:
                return self._run(driver, statement, None, user=True)
        except QueryRefused:
            raise
        except Exception as exc:
            if timeouts.is_timeout(exc):
                raise QueryTimeout(timeouts.timeout_message(timeouts.current_limit())) from None
            message = one_line(exc)
            if readonly.is_write_refusal(message):
                raise QueryRefused(f"query refused: rtgrid query is read-only ({message})") from None
            if _is_driver_error(exc):
                raise UserError(f"query failed: {message} (rtgrid query --schema lists the tables and columns)"
                                ) from None
            raise

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        """Run rtgrid's own SQL (`:name` placeholders) read-only."""
        try:
            with self._driver_connection() as driver:
                return self._run(driver, sql, params, user=False)
        except Exception as exc:
            if timeouts.is_timeout(exc):
                raise QueryTimeout(timeouts.timeout_message(timeouts.current_limit())) from None
            raise

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        result = self.rows(sql, params)
        frame = pd.DataFrame.from_records(result.rows, columns=result.columns)
        for column in frame.columns:  # PostgreSQL NUMERIC arrives as Decimal: make it a float column
            if frame[column].dtype == object:
                first = frame[column].first_valid_index()
                if first is not None and isinstance(frame[column].loc[first], Decimal):
                    frame[column] = frame[column].astype(float)
        return frame


def _is_driver_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.Error)


Database = ReadOnlyDatabase | str | None


@contextmanager
def reading(db: Database | Any) -> Iterator[ReadOnlyDatabase]:
    """A ReadOnlyDatabase from a URL (None: $RTGRID_DB / the default), an open one, or anything with
    an SQLAlchemy engine (`.engine` or `.url`, e.g. a Repository); closed afterwards if opened here."""
    if isinstance(db, ReadOnlyDatabase):
        yield db
        return
    url = db if isinstance(db, str) or db is None else _url_of(db)
    database = ReadOnlyDatabase(url)
    try:
        yield database
    finally:
        database.close()


def _url_of(thing: Any) -> str:
    engine = getattr(thing, "engine", thing)
    url = getattr(engine, "url", None)
    if not isinstance(url, URL):
        raise TypeError(f"cannot read a database from {type(thing).__name__}")
    return url.render_as_string(hide_password=False)


# --- schema documentation ------------------------------------------------------------------

# The meanings live in the schema (db/models.py: table and column comments, the results view's
# docs); only Alembic's own table is described here.
_ALEMBIC_TABLE = "alembic_version"
_ALEMBIC_DOCS = ("the schema revision (Alembic)", {"version_num": "the current schema revision"})
_VIEW_PREFIX = "VIEW: "


def _schema_docs() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(table -> meaning, table -> column -> meaning), tables in schema order, from db/models.py."""
    tables = {name: table.comment or "" for name, table in Base.metadata.tables.items()}
    columns = {name: {column.name: column.comment or "" for column in table.columns}
               for name, table in Base.metadata.tables.items()}
    tables[_ALEMBIC_TABLE], columns[_ALEMBIC_TABLE] = _ALEMBIC_DOCS[0], dict(_ALEMBIC_DOCS[1])
    tables["results"] = _VIEW_PREFIX + RESULTS_VIEW_COMMENT
    columns["results"] = results_view_comments()
    for table in ("trials", "results"):
        _add_catalog_names(columns[table])
    return tables, columns


def _add_catalog_names(docs: dict[str, str]) -> None:
    """The method names come from the catalog at display time, so the stored comments never list them."""
    by_kind = {kind: "/".join(name for name, traits in METHODS.items() if traits.kind == kind)
               for kind in ("source", "transfer")}
    random = "/".join(name for name, traits in METHODS.items() if traits.random_init and not traits.distils)
    distilled = "/".join(name for name, traits in METHODS.items() if traits.random_init and traits.distils)
    docs["method"] = f"{docs['method']}: {by_kind['source']} (source), {by_kind['transfer']} (transfer)"
    docs["init"] = f"{docs['init']}; random methods: {random}; distilled methods: {distilled}"


TABLE_DOCS, COLUMN_DOCS = _schema_docs()


def live_schema(db: ReadOnlyDatabase) -> dict[str, list[tuple[str, str]]]:
    """Table/view name -> [(column, type)] as the live database has them."""
    if db.dialect == "sqlite":
        names = db.frame("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                         "AND name NOT LIKE 'sqlite_%' ORDER BY name")["name"].tolist()
        schema: dict[str, list[tuple[str, str]]] = {}
        for name in names:
            info = db.rows(f"PRAGMA table_info(\"{name}\")")
            schema[name] = [(str(row[1]), str(row[2] or "")) for row in info.rows]
        return schema
    frame = db.frame(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    schema = {}
    for row in frame.itertuples(index=False):
        schema.setdefault(str(row.table_name), []).append((str(row.column_name), str(row.data_type)))
    return schema


def schema_text(db: ReadOnlyDatabase) -> str:
    """Tables, columns (type and one-line meaning) and the results view, for `rtgrid query --schema`."""
    schema = live_schema(db)
    order = [name for name in TABLE_DOCS if name in schema] + sorted(set(schema) - set(TABLE_DOCS))
    lines = [f"database {db.safe_url} ({db.dialect}); accuracies, ASR and ER are fractions"]
    for table in order:
        lines.append("")
        lines.append(f"{table}: {TABLE_DOCS.get(table, '')}".rstrip(": "))
        docs = COLUMN_DOCS.get(table, {})
        width = max((len(c) for c, _ in schema[table]), default=0)
        for column, kind in schema[table]:
            meaning = docs.get(column, "")
            lines.append(f"  {column:<{width}}  {kind.lower():<18} {meaning}".rstrip())
    return "\n".join(lines)


# --- output formats ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], align_right: Sequence[bool] | None = None
               ) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    if align_right is None:
        align_right = [bool(rows) and all(isinstance(r[i], (int, float, Decimal)) or r[i] is None for r in rows)
                       for i in range(len(columns))]
    widths = [max([len(str(c))] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, align_right, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line([str(c) for c in columns]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def format_result(result: QueryResult, fmt: str) -> str:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([["" if v is None else _json_value(v) for v in row] for row in result.rows])
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        return json.dumps([{c: _json_value(v) for c, v in zip(result.columns, row, strict=True)}
                           for row in result.rows], indent=1)
    table = text_table(result.columns, result.rows)
    return f"{table}\n({len(result.rows)} row{'s' if len(result.rows) != 1 else ''})"


def run_query(sql: str, db: Database = None) -> QueryResult:
    """Run one read-only statement against the database at `db` (URL; None = default)."""
    with reading(db) as database:
        return database.execute_user(sql)
