"""Read-only SQL over the results database: `rtgrid query`, `--schema`, and the reader reports use.

Read-only by construction, in layers:
1. the connection cannot write: SQLite is opened `mode=ro` with `PRAGMA query_only`, PostgreSQL
   runs every statement inside a READ ONLY transaction whose snapshot is already taken (so it
   cannot be switched to read-write);
2. a SQLite authorizer denies every action but reading (no PRAGMA writes, ATTACH, DDL, DML);
3. exactly one statement is accepted (a quote- and comment-aware splitter; PostgreSQL also
   prepares it server-side, which refuses several commands), and it must start with a reading
   keyword and contain no writing keyword;
4. no call of an administration or side-effect function: PostgreSQL's (pg_terminate_backend,
   pg_read_file, set_config, dblink, …) are refused lexically, since the URL's role is often a
   superuser and a READ ONLY transaction still runs them; SQLite's (load_extension, readfile, …)
   are denied by the authorizer.
A refused statement is one `QueryRefused` line; the database is not touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd

from orchestrator.errors import UserError, one_line
from workers.trainable import METHODS

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


class QueryRefused(UserError):
    """The statement would (or might) write, or is not exactly one statement."""


# --- lexical checks ---------------------------------------------------------------------------

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
                raise QueryRefused("query refused: unterminated /* comment")
            end = stop + 2
        elif ch in ("'", '"', "`"):
            kind = "string" if ch == "'" else "name"
            j = i + 1
            while True:
                stop = sql.find(ch, j)
                if stop < 0:
                    raise QueryRefused(f"query refused: unterminated {ch} quote")
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
                    raise QueryRefused("query refused: unterminated ' quote")
                end = j + 1
        elif ch == "[":
            stop = sql.find("]", i)
            if stop < 0:
                raise QueryRefused("query refused: unterminated [ name")
            kind, end = "name", stop + 1
        elif ch == "$":
            match = _DOLLAR_TAG.match(sql, i)
            if match and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                tag = match.group(0)
                stop = sql.find(tag, match.end())
                if stop < 0:
                    raise QueryRefused("query refused: unterminated $-quoted string")
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
            raise QueryRefused('query refused: U&"…" identifiers are not allowed in rtgrid query')
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind in ("word", "name") and following == "(" and DENIED_FUNCTIONS.fullmatch(text):
            raise QueryRefused(f"query refused: {text.lower()}() is not allowed in rtgrid query "
                               "(server administration or side effects)")


def check_read_only(sql: str) -> str:
    """The single statement of `sql` if it only reads; QueryRefused (one line) otherwise."""
    statements = split_statements(sql)
    if not statements:
        raise QueryRefused("query refused: no SQL statement given")
    if len(statements) > 1:
        raise QueryRefused(f"query refused: exactly one statement allowed, got {len(statements)}")
    statement = statements[0]
    words = _words(statement)
    if not words or words[0] not in READING_KEYWORDS:
        first = words[0] if words else "?"
        raise QueryRefused(f"query refused: rtgrid query is read-only ({first} statements are not allowed; "
                           "use SELECT / WITH / VALUES / EXPLAIN)")
    if words[0] == "PRAGMA":
        _check_pragma(statement)
    writes = [w for w in words if w in WRITING_KEYWORDS]
    if writes:
        raise QueryRefused(f"query refused: rtgrid query is read-only ({writes[0]} is not allowed)")
    _check_functions(statement)
    return statement


def _check_pragma(statement: str) -> None:
    match = re.fullmatch(r"\s*PRAGMA\s+(?:(\w+)\s*\.\s*)?(\w+)\s*(\(\s*[\w\"'.]+\s*\))?\s*", statement, re.IGNORECASE)
    if match is None or "=" in statement:
        raise QueryRefused("query refused: rtgrid query is read-only (PRAGMA assignments are not allowed)")
    name, argument = match.group(2).lower(), match.group(3)
    if name not in READ_PRAGMAS or (argument and name not in PRAGMAS_WITH_ARGUMENT):
        raise QueryRefused(f"query refused: rtgrid query is read-only (PRAGMA {name} is not allowed)")


# --- the read-only connection ----------------------------------------------------------------

_SQLITE_READ_ACTIONS = frozenset({
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33),
})


def _strict_authorizer(action: int, arg1: str | None, arg2: str | None, *_rest: Any) -> int:
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


def _is_write_refusal(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("readonly", "read-only", "read-write", "read only", "not authorized", "query_only",
                                   "multiple commands", "one statement at a time"))


def _named_to_pyformat(sql: str) -> str:
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


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class ReadOnlyDatabase:
    """A database opened so that it can only be read (see the module docstring)."""

    def __init__(self, url: str) -> None:
        from db.session import open_readonly, resolve_url, safe_url

        self.url = resolve_url(url)
        self.safe_url = safe_url(self.url)
        self.engine = open_readonly(self.url)
        self.dialect = self.engine.dialect.name  # "sqlite" | "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ReadOnlyDatabase:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    @contextmanager
    def _driver_connection(self) -> Iterator[Any]:
        """The DBAPI connection, in a READ ONLY transaction (PostgreSQL), rolled back afterwards."""
        pooled = self.engine.raw_connection()
        try:
            driver = pooled.driver_connection
            if self.dialect == "postgresql":
                driver.rollback()
                with driver.cursor() as cursor:
                    cursor.execute("SET TRANSACTION READ ONLY")
                    cursor.execute("SELECT 1")  # takes the snapshot: READ WRITE can no longer be set
            yield driver
        finally:
            try:
                pooled.rollback()
            finally:
                pooled.close()

    def _run(self, driver: Any, sql: str, params: Mapping[str, Any] | None, user: bool) -> QueryResult:
        if self.dialect == "sqlite":
            if user:
                driver.set_authorizer(_strict_authorizer)
            try:
                # user SQL gets no parameters: its ? and :name are the user's business (an error)
                cursor = driver.execute(sql) if user else driver.execute(sql, dict(params or {}))
                rows = cursor.fetchall()
                columns = [d[0] for d in cursor.description or []]
            finally:
                if user:  # back to the session's own (ATTACH-denying) authorizer for rtgrid's SQL
                    import db.session

                    driver.set_authorizer(getattr(db.session, "_readonly_authorizer", None))
            return QueryResult(columns, rows)
        with driver.cursor() as cursor:
            if user:
                cursor.execute(sql, None, prepare=True)  # server-side prepare refuses several commands
            else:
                cursor.execute(_named_to_pyformat(sql), dict(params or {}))
            columns = [d.name for d in cursor.description or []]
            rows = cursor.fetchall() if cursor.description else []
        return QueryResult(columns, [tuple(r) for r in rows])

    def execute_user(self, sql: str, *, checked: bool = True) -> QueryResult:
        """Run one user statement. `checked=False` skips the lexical checks (tests of the lower layers)."""
        statement = check_read_only(sql) if checked else sql
        try:
            with self._driver_connection() as driver:
                return self._run(driver, statement, None, user=True)
        except QueryRefused:
            raise
        except Exception as exc:
            message = one_line(exc)
            if _is_write_refusal(message):
                raise QueryRefused(f"query refused: rtgrid query is read-only ({message})") from None
            if _is_driver_error(exc):
                raise UserError(f"query failed: {message}") from None
            raise

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        """Run rtgrid's own SQL (`:name` placeholders) read-only."""
        with self._driver_connection() as driver:
            return self._run(driver, sql, params, user=False)

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
    database = ReadOnlyDatabase(url)  # type: ignore[arg-type]
    try:
        yield database
    finally:
        database.close()


def _url_of(thing: Any) -> str:
    engine = getattr(thing, "engine", thing)
    url = getattr(engine, "url", None)
    if url is None:
        raise TypeError(f"cannot read a database from {type(thing).__name__}")
    return url.render_as_string(hide_password=False)


# --- schema documentation ------------------------------------------------------------------

TABLE_DOCS: dict[str, str] = {
    "experiments": "one row per named submission of a grid",
    "trials": "one row per spec (deduplicated by spec_hash across experiments) with its final result",
    "experiment_trials": "which trials belong to which experiment (many-to-many)",
    "epoch_metrics": "metrics of a trial at each evaluation epoch",
    "artifacts": "work shared by many trials: source checkpoints, cached adversarial sets",
    "er_baselines": "linear fits (logit/probit space) predicting OOD accuracy from ID accuracy, for ER",
    "alembic_version": "the schema revision (Alembic)",
    "results": "VIEW: one row per (experiment, trial) with the key fields and final metrics; start here",
}

_FRACTION = "fraction in [0,1]"
_TRIAL_KEYS: dict[str, str] = {
    "kind": "source (trains a source model) | transfer (fine-tunes a source on a target)",
    "arch": "architecture, e.g. resnet50, tiny_resnet",
    "source": "pre-trained weights: torchvision:<arch> (natural), robustness:<name> (Madry robust), "
              "spec:<spec_hash> (a source trial), file:<name> (its sha256 in spec_json), scratch (random init); "
              "NULL for source trials. "
              f"Random-init trials: method {'/'.join(n for n, m in METHODS.items() if m.random_init)} "
              "(source kept for ASR) or source scratch",
    "dataset": "training / ID dataset (target of a transfer)",
    "ood": "OOD evaluation set (cifar10.1, noise-3, ...); NULL = none",
    "method": f"training method: {'/'.join(n for n, m in METHODS.items() if m.kind == 'source')} (source), "
              f"{'/'.join(n for n, m in METHODS.items() if m.kind == 'transfer')} (transfer)",
    "blocks": "residual blocks fine-tuned besides the head (Utrera: 0/1/3/9); NULL = all",
    "subset_size": "training images used (random class-covering subset); NULL = the full training set",
    "seed": "random seed (also fixes the training subset: runs pair by seed)",
    "epochs": "training epochs",
}
_TRIAL_FINALS: dict[str, str] = {
    "test_acc": f"final (last-epoch) ID test accuracy, {_FRACTION}",
    "ood_acc": f"final OOD accuracy, {_FRACTION}",
    "asr": f"attack success rate of the penultimate-layer attack on the pre-trained source, {_FRACTION}",
    "adv_acc": f"accuracy on the attack's adversarial images, {_FRACTION}",
    "clean_acc": f"accuracy on the attack's clean images, {_FRACTION}",
    "er": "effective robustness at the last epoch: OOD acc - baseline-predicted OOD acc, fraction in [-1,1]",
    "robust_acc": f"PGD robust test accuracy (source trials), {_FRACTION}",
    "duration_s": "wall-clock seconds the trial's kernel ran",
}

COLUMN_DOCS: dict[str, dict[str, str]] = {
    "experiments": {
        "id": "primary key",
        "name": "experiment name (unique), e.g. utrera2021",
        "grid": "grid preset name or grid file path",
        "grid_json": "JSON summary of the expanded grid",
        "created_at": "when the experiment was first submitted (UTC)",
        "notes": "free text",
    },
    "trials": {
        "id": "primary key",
        "spec_hash": "sha256 of the canonical spec JSON: the deduplication key (unique)",
        "spec_json": "the full TrialSpec as canonical JSON (params included)",
        "status": "pending | running | completed | failed | cancelled",
        "attempts": "how many times the trial was started",
        "error": "one-line error of the last failed attempt",
        "created_at": "when the trial was first planned (UTC)",
        "started_at": "when the last attempt started (UTC)",
        "finished_at": "when the trial completed or failed (UTC)",
        "heartbeat_at": "last sign of life of a running trial (UTC)",
        "checkpoint_uri": "the trained model's checkpoint (source trials)",
        **_TRIAL_KEYS,
        **_TRIAL_FINALS,
        "worker": "node / host that ran the trial",
        "claimed_by": "the driver that has queued the trial (concurrent drivers never run it twice); NULL = none",
    },
    "experiment_trials": {
        "experiment_id": "experiments.id",
        "trial_id": "trials.id",
    },
    "epoch_metrics": {
        "id": "primary key",
        "trial_id": "trials.id",
        "epoch": "evaluation epoch, 1-based",
        "train_loss": "mean training loss over the epoch",
        "train_acc": f"training accuracy over the epoch, {_FRACTION}",
        "test_acc": f"ID test accuracy at this epoch, {_FRACTION}",
        "ood_acc": f"OOD accuracy at this epoch, {_FRACTION}",
        "er": "effective robustness at this epoch (filled when a baseline is fitted), fraction in [-1,1]",
        "lr": "learning rate at the end of the epoch",
        "seconds": "wall-clock seconds of this epoch",
        "robust_acc": f"PGD robust test accuracy at this epoch (source trials), {_FRACTION}",
        "recorded_at": "when the row was written (UTC)",
    },
    "artifacts": {
        "id": "primary key",
        "key_hash": "content key (unique): what the artifact was computed from",
        "kind": "artifact kind, e.g. source-checkpoint, adversarial-set",
        "uri": "where the artifact is stored",
        "meta_json": "JSON metadata",
        "created_at": "when it was recorded (UTC)",
    },
    "er_baselines": {
        "id": "primary key",
        "id_dataset": "ID dataset of the fit, e.g. cifar10",
        "ood_dataset": "OOD dataset of the fit, e.g. cifar10.1",
        "transform": "logit | probit: the space of the linear fit",
        "slope": "a in transform(OOD) = a * transform(ID) + b",
        "intercept": "b in transform(OOD) = a * transform(ID) + b",
        "n_points": "number of models the fit used",
        "r": "correlation of the fit in transformed space",
        "fitted_from": "published:NAME | csv:PATH | experiment:NAME",
        "created_at": "when the fit was stored (UTC)",
    },
    "alembic_version": {
        "version_num": "the current schema revision",
    },
    "results": {
        "experiment": "experiments.name",
        "trial_id": "trials.id",
        "spec_hash": "trials.spec_hash",
        "status": "pending | running | completed | failed | cancelled",
        **_TRIAL_KEYS,
        **_TRIAL_FINALS,
        "last_epoch": "the last epoch with recorded metrics",
        "finished_at": "when the trial completed or failed (UTC)",
    },
}


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
