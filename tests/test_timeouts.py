"""Every read path runs under `--timeout`: a runaway statement is stopped (by the server on PostgreSQL,
even when the client is killed), with one line, and the database is unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cli_helpers import command, error_line, run_cli
from db_fixtures import pg_admin_engine
from results_data import db_fingerprint

from db.errors import QueryTimeout
from db.session import open_database
from db.timeouts import limit_engine, read_time_limit
from orchestrator.results.query import ReadOnlyDatabase

# Each read command with the arguments it needs besides --timeout.
READ_COMMANDS = {
    "query": ["SELECT 1"],
    "report": ["er", "--experiment", "x"],
    "plot": ["er", "--experiment", "x", "-o", "x.png"],
    "export": ["x"],
    "status": [],
}
REPO_ROOT = Path(__file__).resolve().parents[1]


def runaway(dialect: str, marker: str) -> str:
    """A statement that computes for hours with constant memory, tagged so pg_stat_activity can find it."""
    if dialect == "sqlite":
        return f"/* {marker} */ WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    return (f"/* {marker} */ SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b, "
            "generate_series(1, 100000) c")


def active_backends(marker: str) -> int:
    admin = pg_admin_engine()
    try:
        with admin.connect() as connection:
            return int(connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
                "AND position(%(marker)s in query) > 0", {"marker": marker}).scalar_one())
    finally:
        admin.dispose()


@pytest.mark.parametrize("name", READ_COMMANDS)
def test_every_read_command_has_a_timeout(name: str) -> None:
    timeout = next(p for p in command(name).params if p.name == "timeout_s")
    assert timeout.default == 60.0
    for bad in ("0", "-1", "nan", "inf"):
        line = error_line(run_cli(name, *READ_COMMANDS[name], "--timeout", bad, expect=None))
        assert "--timeout must be a positive number" in line, (name, bad, line)


def test_runaway_query_is_stopped_with_one_line(results_url: str) -> None:
    dialect = "sqlite" if results_url.startswith("sqlite") else "postgresql"
    marker = f"rtgrid-runaway-{uuid.uuid4().hex[:8]}"
    before = db_fingerprint(results_url)
    line = error_line(run_cli("query", runaway(dialect, marker), "--timeout", "1", "--db", results_url, expect=None))
    assert "stopped after 1 s" in line and "raise --timeout" in line, line
    if dialect == "postgresql":  # the server cancelled it: no backend still runs it
        assert active_backends(marker) == 0
    assert db_fingerprint(results_url) == before


def test_rtgrids_own_reads_and_a_readers_repository_are_limited(results_url: str) -> None:
    """report / export / plot read through ReadOnlyDatabase.rows, status through a reader's Repository."""
    dialect = "sqlite" if results_url.startswith("sqlite") else "postgresql"
    marker = f"rtgrid-own-{uuid.uuid4().hex[:8]}"
    with read_time_limit(0.5):
        with ReadOnlyDatabase(results_url) as database, pytest.raises(QueryTimeout, match="stopped after 0.5 s"):
            database.rows(runaway(dialect, marker))
        with ReadOnlyDatabase(results_url) as database:  # a normal read under the same limit still works
            assert database.rows("SELECT count(*) FROM trials").rows[0][0] > 0
    engine = limit_engine(open_database(results_url, create=False))
    try:
        with pytest.raises(QueryTimeout, match="stopped after 0.5 s"), read_time_limit(0.5):
            with engine.connect() as connection:
                connection.exec_driver_sql(runaway(dialect, marker).replace("%", "%%")).scalar_one()
        with read_time_limit(0.5), engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM trials").scalar_one() > 0
    finally:
        engine.dispose()
    if dialect == "postgresql":
        assert active_backends(marker) == 0


@pytest.mark.postgres
def test_killed_client_leaves_no_runaway_on_the_server(results_postgres: str) -> None:
    """The issue's failure: the client was killed and the query kept running. statement_timeout is the server's."""
    marker = f"rtgrid-killed-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    client = subprocess.Popen(
        [sys.executable, "-c", "from cli import main; main()", "query", runaway("postgresql", marker),
         "--timeout", "3", "--db", results_postgres],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = False
        for _ in range(300):  # the client starts (imports) and the server starts the statement
            if active_backends(marker):
                seen = True
                break
            if client.poll() is not None:
                break
            time.sleep(0.1)
        assert seen, "the runaway statement never started on the server"
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    assert active_backends(marker) == 1  # the client is gone; the server still runs it …
    for _ in range(300):  # … until the statement timeout (3 s) stops it
        if not active_backends(marker):
            break
        time.sleep(0.1)
    assert active_backends(marker) == 0
