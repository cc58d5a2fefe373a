"""`rtgrid query` / `export` and results_frame on a real SQLite file and a real PostgreSQL database:
reads work, every write is refused with one line and exit 2, and the database is unchanged."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import Result, error_line, run_cli
from results_data import db_fingerprint, raw_frame, raw_trials

from orchestrator.results.export import export_frame
from orchestrator.results.frames import results_frame
from orchestrator.results.query import (
    COLUMN_DOCS,
    TABLE_DOCS,
    QueryRefused,
    ReadOnlyDatabase,
    check_user_sql,
    live_schema,
)

WRITES = [
    "INSERT INTO experiments (name, grid) VALUES ('x', 'y')",
    "UPDATE trials SET seed = 1",
    "DELETE FROM trials",
    "DROP TABLE trials",
    "DROP VIEW results",
    "CREATE TABLE x (a INTEGER)",
    "CREATE INDEX ix_x ON trials (seed)",
    "ALTER TABLE trials ADD COLUMN x INTEGER",
    "ATTACH DATABASE 'other.sqlite' AS other",
    "PRAGMA user_version = 5",
    "PRAGMA journal_mode = delete",
    "PRAGMA journal_mode(delete)",
    "SELECT 1; DROP TABLE trials",
    "SELECT 1; DELETE FROM trials;",
    "WITH doomed AS (SELECT id FROM trials) DELETE FROM trials WHERE id IN (SELECT id FROM doomed)",
    "WITH d AS (DELETE FROM trials RETURNING id) SELECT count(*) FROM d",
    "REPLACE INTO experiments (name, grid) VALUES ('x', 'y')",
    "SELECT * INTO trials_copy FROM trials",
    "EXPLAIN ANALYZE DELETE FROM trials",
    "VACUUM",
    "BEGIN",
    "COMMIT",
    "SET default_transaction_read_only = off",
    "TRUNCATE trials",
]
# Sent past the lexical check: the connection itself must refuse them.
CONNECTION_WRITES = {
    "sqlite": ["INSERT INTO experiments (name, grid) VALUES ('x', 'y')", "DELETE FROM trials", "DROP TABLE trials",
               "CREATE TABLE x (a INTEGER)", "PRAGMA user_version = 5", "PRAGMA journal_mode = delete",
               "ATTACH DATABASE 'other.sqlite' AS other", "SELECT 1; DROP TABLE trials"],
    "postgresql": ["INSERT INTO experiments (name, grid) VALUES ('x', 'y')", "DELETE FROM trials", "DROP TABLE trials",
                   "CREATE TABLE x (a INTEGER)", "SELECT 1; DROP TABLE trials", "SET TRANSACTION READ WRITE",
                   "SELECT nextval('trials_id_seq')", "WITH d AS (DELETE FROM trials RETURNING id) SELECT 1"],
}


# PostgreSQL functions with server side effects, and the three bypasses of the old deny-list (a call inside
# ARRAY[...], a `--` comment ended by a carriage return, a built-in that runs SQL text): on PostgreSQL the
# parser's allow-list refuses them; on SQLite they are no functions at all (one line, nothing runs).
DENIED_CALLS = [
    "SELECT ARRAY[pg_terminate_backend(pg_backend_pid())]",
    "SELECT 1 AS a -- hidden\r, pg_read_file('/etc/hostname')",
    "SELECT query_to_xml('SELECT pg_sleep(0)', true, true, '')",
    "SELECT table_to_xml('pg_authid', true, true, '')",
    "SELECT database_to_xml(true, true, '')",
    "SELECT * FROM ts_stat('SELECT to_tsvector(''x'')')",
    "SELECT xpath('/a', query_to_xml('SELECT 1', true, true, ''))",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_catalog.pg_cancel_backend(1)",
    "SELECT PG_RELOAD_CONF()",
    "SELECT pg_read_file('/etc/hostname')",
    "SELECT * FROM pg_ls_dir('.')",
    "SELECT pg_stat_reset()",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_try_advisory_xact_lock(42)",
    "SELECT pg_notify('channel', 'x')",
    "SELECT pg_sleep (0)",
    'SELECT "pg_sleep"(0)',
    "SELECT pg_sleep/* hidden */(0)",
    "SELECT set_config('statement_timeout', '1', false)",
    "SELECT lo_import('/etc/hostname')",
    "SELECT dblink_connect('x')",
    "SELECT pg_logical_emit_message(true, 'x', 'y')",
    "SELECT pg_file_write('x', 'y', false)",
    "WITH x AS (SELECT pg_sleep(0)) SELECT * FROM x",
    'SELECT U&"pg_sl\\0065ep"(0)',
    "SELECT (SELECT max(seed) FROM trials WHERE seed = pg_backend_pid())",
    "SELECT CASE WHEN true THEN pg_reload_conf() END",
    "SELECT 'x'::regclass",
]
# Relations outside rtgrid's schema (secrets live there on a superuser's connection), also behind a CTE
# that shadows the name where PostgreSQL does not.
DENIED_RELATIONS = [
    "SELECT rolpassword FROM pg_authid",
    "SELECT query FROM pg_catalog.pg_stat_activity",
    "SELECT * FROM information_schema.user_mapping_options",
    "WITH pg_authid AS (SELECT * FROM pg_authid) SELECT * FROM pg_authid",
]
# Reads that must keep working: aggregates, window functions, CTEs, names that merely look alike.
READS = [
    "SELECT dataset, count(*), avg(test_acc), min(seed), max(seed) FROM results GROUP BY dataset",
    "SELECT trial_id, rank() OVER (PARTITION BY dataset ORDER BY test_acc DESC) FROM results",
    "WITH done AS (SELECT * FROM results WHERE status = 'completed') SELECT count(*) FROM done",
    "SELECT lower(dataset), 'pg_sleep(1)' AS text FROM trials LIMIT 1",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT sum(i) FROM n",
]
# PostgreSQL's allow-list: date, cast, ordered-set and filtered aggregates.
READS_PG = [
    "SELECT extract(year FROM now()), round(avg(test_acc)::numeric, 3), string_agg(DISTINCT dataset, ',') "
    "FROM results",
    "SELECT count(*) FILTER (WHERE seed > 0), percentile_cont(0.5) WITHIN GROUP (ORDER BY seed) FROM trials",
]


def _fingerprint(url: str) -> object:
    return db_fingerprint(url)


def _invoke(*args: str) -> Result:
    """`rtgrid query ARGS…`, whatever its exit code (the tests check it)."""
    return run_cli("query", *args, expect=None)


def test_select_in_every_format(results_url: str) -> None:
    sql = "SELECT spec_hash, seed, test_acc FROM results WHERE experiment = 'utrera-mini' ORDER BY trial_id"
    expected = raw_trials(results_url, "utrera-mini").sort_values("id")
    table = _invoke(sql, "--db", results_url)
    assert table.exit_code == 0, table.output
    assert f"({len(expected)} rows)" in table.stdout
    as_csv = pd.read_csv(io.StringIO(_invoke(sql, "--format", "csv", "--db", results_url).stdout))
    assert as_csv["spec_hash"].str.strip().tolist() == expected["spec_hash"].tolist()
    as_json = json.loads(_invoke(sql, "--format", "json", "--db", results_url).stdout)
    assert [row["seed"] for row in as_json] == expected["seed"].tolist()
    assert as_json[0]["test_acc"] is None or 0 <= as_json[0]["test_acc"] <= 1


def test_every_write_is_refused_and_nothing_changes(results_url: str) -> None:
    before = _fingerprint(results_url)
    for sql in WRITES:
        line = error_line(_invoke(sql, "--db", results_url))
        # SQLite's parser rejects a few before its authorizer sees them (a DML CTE is no SQLite syntax)
        assert "refused" in line or (results_url.startswith("sqlite") and "syntax error" in line), (sql, line)
    assert _fingerprint(results_url) == before
    if results_url.startswith("sqlite"):
        assert not (Path(results_url.removeprefix("sqlite:///")).parent / "other.sqlite").exists()


def test_side_effect_functions_are_refused_and_reads_still_work(results_url: str) -> None:
    before = _fingerprint(results_url)
    postgres = results_url.startswith("postgresql")
    for sql in DENIED_CALLS + DENIED_RELATIONS:
        if not postgres and "\r" in sql:
            continue  # SQLite ends a -- comment at \n only: there the call is inside the comment
        line = error_line(_invoke(sql, "--db", results_url))
        if postgres:  # refused before the server sees it
            assert "refused" in line and "not allowed" in line, (sql, line)
    for sql in READS + (READS_PG if postgres else []):
        result = _invoke(sql, "--db", results_url)
        assert result.exit_code == 0, (sql, result.output)
    assert _fingerprint(results_url) == before


def test_sqlite_authorizer_denies_file_and_extension_functions(results_sqlite: str) -> None:
    import sqlite3

    from db.readonly import SQLITE_DENIED_FUNCTIONS, strict_authorizer

    for name in SQLITE_DENIED_FUNCTIONS:
        assert strict_authorizer(sqlite3.SQLITE_FUNCTION, None, name) == sqlite3.SQLITE_DENY
    assert strict_authorizer(sqlite3.SQLITE_FUNCTION, None, "count") == sqlite3.SQLITE_OK
    with ReadOnlyDatabase(results_sqlite) as database:
        for sql in ("SELECT fts3_tokenizer('simple')", "SELECT load_extension('x')"):  # past the lexical check
            with pytest.raises(QueryRefused):
                database.execute_user(sql, checked=False)
        # the sqlite3 shell's readfile(), made available: still denied by name
        with database.engine.connect() as connection:
            connection.connection.driver_connection.create_function("readfile", 1, lambda path: b"secret")
        with pytest.raises(QueryRefused):
            database.execute_user("SELECT readfile('/etc/hostname')")
        assert database.execute_user("SELECT count(*), max(seed) FROM trials").rows[0][0] > 0


def test_the_connection_itself_refuses_writes(results_url: str) -> None:
    before = _fingerprint(results_url)
    with ReadOnlyDatabase(results_url) as database:
        for sql in CONNECTION_WRITES[database.dialect]:
            with pytest.raises(QueryRefused):
                database.execute_user(sql, checked=False)
        # the session cannot be talked into writing afterwards either
        with pytest.raises(QueryRefused):
            database.execute_user("DELETE FROM trials", checked=False)
        assert database.execute_user("SELECT count(*) FROM trials").rows[0][0] > 0
    assert _fingerprint(results_url) == before


def test_sqlite_wal_file_is_byte_identical_after_reads(results_sqlite: str) -> None:
    path = Path(results_sqlite.removeprefix("sqlite:///"))
    assert raw_frame(results_sqlite, "PRAGMA journal_mode")["journal_mode"].iloc[0] == "wal"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for sql in ("SELECT count(*) FROM epoch_metrics", "PRAGMA journal_mode", "PRAGMA table_info(trials)"):
        assert _invoke(sql, "--db", results_sqlite).exit_code == 0
    assert _invoke("--schema", "--db", results_sqlite).exit_code == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_postgres_guard_parses_as_the_server_does() -> None:
    """The parser, not a lexer: strings, comments (ended by \\r too) and quoted names are read as the server
    reads them; exactly one statement; every refusal names the part and the fix."""
    assert check_user_sql("SELECT 'a;b' AS x; ", "postgresql")
    assert check_user_sql("SELECT $$;pg_sleep(1)$$, 'it''s; fine' /* ; */ FROM trials", "postgresql")
    assert check_user_sql("select case when seed > 0 then 'update' else 'x' end from trials", "postgresql")
    for sql, part in [("SELECT 1; SELECT 2", "exactly one statement"), ("SELECT 'unterminated", "syntax"),
                      ("   -- only a comment\n;", "no SQL statement"), ("SELECT 1 --\rFROM pg_authid", "pg_authid"),
                      ("SELECT 1 FROM trials --\r; DELETE FROM trials", "exactly one statement"),
                      ("SELECT * INTO t2 FROM trials", "INTO"), ("SELECT * FROM trials FOR UPDATE", "FOR UPDATE"),
                      ("EXPLAIN ANALYZE DELETE FROM trials", "DELETE"), ("SHOW ALL", "SHOW"),
                      ("SELECT ARRAY[pg_sleep(1)]", "pg_sleep()"), ("SELECT 1::regproc", "regproc"),
                      ("SELECT seed OPERATOR(public.+) 1 FROM trials", "operator public.+"),
                      ("SELECT * FROM XMLTABLE('/a' PASSING '<a/>' COLUMNS x int)", "RangeTableFunc")]:
        with pytest.raises(QueryRefused) as refused:
            check_user_sql(sql, "postgresql")
        assert part in str(refused.value) and "\n" not in str(refused.value), (sql, refused.value)
    with pytest.raises(QueryRefused):
        check_user_sql(" \n", "sqlite")
    assert check_user_sql("SELECT seed BETWEEN 0 AND 2, dataset SIMILAR TO 'c%', seed::float8 ^ 2, dataset || '!', "
                          "spec_hash IS DISTINCT FROM NULL FROM trials", "postgresql")


def test_schema_describes_every_live_column(results_url: str) -> None:
    with ReadOnlyDatabase(results_url) as database:
        schema = live_schema(database)
    assert {"experiments", "trials", "experiment_trials", "epoch_metrics", "artifacts", "er_baselines",
            "results"} <= set(schema)
    missing = [f"{table}.{column}" for table, columns in schema.items() for column, _ in columns
               if not COLUMN_DOCS.get(table, {}).get(column)]
    assert not missing, f"columns without a comment in db/models.py (comment=, or RESULTS_VIEW_ONLY_COLUMNS): {missing}"
    assert set(schema) <= set(TABLE_DOCS)
    stale = [f"{t}.{c}" for t, cols in COLUMN_DOCS.items() if t in schema for c in cols
             if c not in {name for name, _ in schema[t]}]
    assert not stale, f"described columns the database does not have: {stale}"
    result = _invoke("--schema", "--db", results_url)
    assert result.exit_code == 0
    assert "results: VIEW" in result.stdout and "subset_size" in result.stdout


def test_schema_docs_name_the_catalogs_methods() -> None:
    """The stored comments never list methods (a new method needs no migration); --schema adds the catalog's."""
    from db.models import Base
    from orchestrator.results.query import COLUMN_DOCS
    from workers.trainable import METHODS

    trials = Base.metadata.tables["trials"].c
    assert not any(name in (trials.method.comment or "") for name in ("finetune", "renofeation", "pgd-linf"))
    source = "/".join(n for n, m in METHODS.items() if m.kind == "source")
    transfer = "/".join(n for n, m in METHODS.items() if m.kind == "transfer")
    init_words = set(re.findall(r"[\w-]+", trials.init.comment or ""))  # "pretrained" holds "retrain"
    assert not init_words & {"retrain", "renofeation", "delta-r", "finetune"}
    random = "/".join(n for n, m in METHODS.items() if m.random_init and not m.distils)
    distilled = "/".join(n for n, m in METHODS.items() if m.random_init and m.distils)
    for table in ("trials", "results"):
        assert COLUMN_DOCS[table]["method"].endswith(f": {source} (source), {transfer} (transfer)")
        assert COLUMN_DOCS[table]["init"].endswith(f"; random methods: {random}; distilled methods: {distilled}")


def test_bad_input_is_one_line(tmp_path: Path, results_sqlite: str) -> None:
    missing = tmp_path / "nothing.sqlite"
    error_line(_invoke("SELECT 1", "--db", f"sqlite:///{missing}"))
    assert not missing.exists()
    error_line(_invoke("SELECT * FROM no_such_table", "--db", results_sqlite))
    error_line(_invoke("--db", results_sqlite))
    error_line(_invoke("SELECT 1", "--db", "postgresql://postgres@127.0.0.1:1/none"))


def test_export_trials_and_epochs(results_url: str, tmp_path: Path) -> None:
    trials = raw_trials(results_url, "smoke-mini")
    result = run_cli("export", "smoke-mini", "--db", results_url)  # exit 0
    exported = pd.read_csv(io.StringIO(result.stdout))
    assert sorted(exported["spec_hash"]) == sorted(trials["spec_hash"])
    assert {"test_acc", "spec_json", "source_label"} <= set(exported.columns)
    target = tmp_path / "epochs.parquet"
    run_cli("export", "smoke-mini", "--table", "epochs", "--format", "parquet", "-o", str(target),
            "--db", results_url)  # exit 0
    epochs = pd.read_parquet(target)
    raw_epochs = raw_frame(results_url, "SELECT * FROM epoch_metrics")
    assert len(epochs) == raw_epochs["trial_id"].isin(trials["id"]).sum()
    assert epochs.groupby("trial_id")["epoch"].max().max() == 3
    error_line(run_cli("export", "smoke-mini", "--format", "parquet", "--db", results_url, expect=2))
    error_line(run_cli("export", "no-such-experiment", "--db", results_url, expect=2))
    # the format follows -o's extension; a --format that contradicts it is refused, nothing written
    by_name = tmp_path / "trials.parquet"
    run_cli("export", "smoke-mini", "-o", str(by_name), "--db", results_url)
    assert sorted(pd.read_parquet(by_name)["spec_hash"]) == sorted(trials["spec_hash"])
    contradicted = tmp_path / "other.parquet"
    assert ".parquet" in error_line(run_cli("export", "smoke-mini", "--format", "csv", "-o", str(contradicted),
                                            "--db", results_url, expect=2))
    assert not contradicted.exists()


def test_results_frame(results_url: str) -> None:
    frame = results_frame("smoke-mini", db=results_url)
    raw = raw_trials(results_url, "smoke-mini")
    assert len(frame) == len(raw)
    assert str(frame["subset_size"].dtype) == "Int64" and frame["subset_size"].isna().any()
    transfers = frame[frame["source"].fillna("").str.startswith("spec:")]
    methods = dict(zip(raw["spec_hash"], raw["method"], strict=True))
    for source, label in zip(transfers["source"], transfers["source_label"], strict=True):
        assert label == methods[source.removeprefix("spec:")]
    assert set(frame.loc[frame["source"] == "scratch", "source_label"]) == {"scratch"}
    assert frame["test_acc"].dropna().between(0, 1).all()
    with pytest.raises(Exception, match="unknown experiment"):
        results_frame("nope", db=results_url)


def test_export_frame_matches_raw(results_sqlite: str) -> None:
    frame = export_frame("utrera-mini", "trials", results_sqlite)
    raw = raw_trials(results_sqlite, "utrera-mini")
    assert frame["id"].tolist() == sorted(raw["id"].tolist())
    assert set(frame["status"]) == {"completed", "failed", "pending"}
