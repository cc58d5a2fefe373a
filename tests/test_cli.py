"""The `rtgrid` command line: recording a plan at full scale (--record-only), status, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli
from results_data import db_fingerprint
from sqlalchemy import create_engine, text

from db.session import head_revision, normalise_url
from orchestrator.run.runner import DIAGNOSTICS_ENV
from workers.diagnostics import Diagnostics

REPO = Path(__file__).resolve().parents[1]


def _count(db_url: str, sql: str) -> int:
    engine = create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_grid_show_count_and_breakdown() -> None:
    assert run_cli("grid", "show", "utrera2021", "--count").stdout.strip() == "14400"
    out = run_cli("grid", "show", "utrera2021").stdout
    assert "cells: 96 = 4 source x 6 dataset x 4 blocks; 150 specs per cell" in out
    out = run_cli("grid", "list").stdout
    assert "utrera2021" in out and "14400" in out and "smoke" in out


@pytest.mark.slow
def test_record_only_of_14400_specs_twice(db_url: str) -> None:
    started = time.perf_counter()
    out = run_cli("submit", "utrera2021", "--record-only", "--db", db_url).stdout
    seconds = time.perf_counter() - started
    print(f"record-only of 14,400 specs: {seconds:.1f}s")
    assert "14400 new" in out
    assert _count(db_url, "SELECT count(*) FROM trials") == 14400
    assert _count(db_url, "SELECT count(*) FROM trials WHERE status = 'pending'") == 14400
    out = run_cli("submit", "utrera2021", "--record-only", "--db", db_url).stdout
    assert "0 new" in out and "nothing new to record" in out
    assert _count(db_url, "SELECT count(*) FROM trials") == 14400
    # A second experiment over a subset of the same specs (Table 4's seeds) links, never duplicates.
    out = run_cli("submit", "utrera2021-table4", "--record-only", "--db", db_url).stdout
    assert "12576 trials — 0 new" in out and "12576 already pending" in out
    assert _count(db_url, "SELECT count(*) FROM experiments") == 2
    assert _count(db_url, "SELECT count(*) FROM trials") == 14400
    assert _count(db_url, "SELECT count(*) FROM experiment_trials") == 14400 + 12576
    out = run_cli("status", "--db", db_url).stdout
    assert "pending" in out


GRID_A = """
name: a
fixed: {arch: tiny_resnet, method: finetune, epochs: 2, source: torchvision:resnet18, dataset: digits}
axes: {seed: [0, 1, 2, 3], subset_size: [100, 200]}
"""
GRID_B = """
name: b
fixed: {arch: tiny_resnet, method: finetune, epochs: 2, source: torchvision:resnet18, dataset: digits}
axes: {seed: [2, 3, 4], subset_size: [100, 200]}
"""


def test_second_experiment_links_the_specs_it_shares(db_url: str, tmp_path: Path) -> None:
    """B shares 4 of its 6 specs with A: those are linked (A's trial rows, still completed), 2 are new."""
    (tmp_path / "a.yaml").write_text(GRID_A)
    (tmp_path / "b.yaml").write_text(GRID_B)
    out = run_cli("submit", str(tmp_path / "a.yaml"), "--record-only", "--db", db_url).stdout
    assert "8 new" in out
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:  # as if A had run
        connection.execute(text("UPDATE trials SET status = 'completed', attempts = 1, test_acc = 0.5"))
    engine.dispose()
    out = run_cli("submit", str(tmp_path / "b.yaml"), "--record-only", "--db", db_url).stdout
    assert "6 trials — 2 new, 4 already completed" in out, out
    assert _count(db_url, "SELECT count(*) FROM trials") == 10
    links = ("SELECT count(*) FROM experiment_trials et JOIN experiments e ON e.id = et.experiment_id "
             "JOIN trials t ON t.id = et.trial_id WHERE e.name = '{}' AND t.status = '{}'")
    assert _count(db_url, links.format("b", "completed")) == 4  # linked to A's completed rows, not re-planned
    assert _count(db_url, links.format("b", "pending")) == 2
    assert _count(db_url, "SELECT count(*) FROM trials WHERE status = 'completed' AND attempts = 1") == 8
    assert _count(db_url, "SELECT count(*) FROM experiment_trials") == 8 + 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "nope", "--dry-run"], "unknown grid 'nope'"),
        (["grid", "show", "nope"], "unknown grid 'nope'"),
        (["submit", "{bad}", "--dry-run"], "malformed YAML"),
        (["submit", "{axis}", "--dry-run"], "unknown axis 'colour'"),
        (["submit", "{type}", "--dry-run"], "must be an integer"),
        (["status", "missing-experiment"], "unknown experiment"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_db_unchanged(db_url: str, tmp_path: Path, args: list[str],
                                                              message: str) -> None:
    files = {
        "{bad}": "fixed: [1, 2\n",
        "{axis}": "fixed: {arch: x}\naxes: {colour: [red]}\n",
        "{type}": "fixed: {arch: x, method: finetune, epochs: one, source: scratch, dataset: d}\naxes: {seed: [0]}\n",
    }
    # a database that already holds an experiment with trials, one of them completed with epochs
    run_cli("submit", "smoke", "--record-only", "--db", db_url)
    _complete_one_trial(db_url)
    before = db_fingerprint(db_url)
    resolved = []
    for arg in args:
        if arg in files:
            path = tmp_path / "grid.yaml"
            path.write_text(files[arg])
            arg = str(path)
        resolved.append(arg)
    if resolved[0] != "grid":  # grid commands never open the database
        resolved += ["--db", db_url]
    line = error_line(run_cli(*resolved, expect=2))  # exit 2, one line, no traceback
    assert message in line
    assert db_fingerprint(db_url) == before


def _complete_one_trial(db_url: str) -> None:
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:
        trial_id = connection.execute(text("SELECT min(id) FROM trials")).scalar_one()
        connection.execute(text("UPDATE trials SET status = 'completed', test_acc = 0.5 WHERE id = :i"),
                           {"i": trial_id})
        connection.execute(text("INSERT INTO epoch_metrics (trial_id, epoch, test_acc) VALUES (:i, 1, 0.5)"),
                           {"i": trial_id})
    engine.dispose()


def test_the_unchanged_check_can_fail(db_url: str) -> None:
    """The fingerprint sees a single changed value (not only row counts or file sizes)."""
    run_cli("submit", "smoke", "--record-only", "--db", db_url)
    before = db_fingerprint(db_url)
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE trials SET seed = seed + 1 WHERE id = (SELECT min(id) FROM trials)"))
    engine.dispose()
    assert db_fingerprint(db_url) != before


def test_readers_refuse_a_database_at_another_revision(db_url: str, tmp_path: Path) -> None:
    """query / export / report / plot check the schema revision as writers do (one line, exit 2)."""
    run_cli("submit", "smoke", "--record-only", "--experiment", "s", "--db", db_url)
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffffeeee0000'"))
    engine.dispose()
    commands = [["query", "SELECT 1"], ["export", "s"], ["report", "demo", "--experiment", "s"],
                ["plot", "er", "--experiment", "s", "-o", str(tmp_path / "er.png")]]
    for command in commands:
        line = error_line(run_cli(*command, "--db", db_url, expect=2))
        assert "revision ffffeeee0000" in line and head_revision() in line, (command, line)


def test_readers_do_not_create_a_database(db_url: str, db_backend: str) -> None:
    line = error_line(run_cli("query", "SELECT 1", "--db", db_url, expect=2))
    assert line.startswith("rtgrid: error: no rtgrid database at ")
    if db_backend == "sqlite":
        path = Path(db_url.removeprefix("sqlite:///"))
        assert not path.exists()
        path.touch()  # an empty file is no rtgrid database either, and stays empty
        line = error_line(run_cli("report", "demo", "--experiment", "s", "--db", db_url, expect=2))
        assert "no rtgrid database at " in line and path.stat().st_size == 0
    else:
        assert _count(db_url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == 0


def test_unreachable_database_is_one_line() -> None:
    error_line(run_cli("status", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none", expect=2))


def test_cancel_marks_pending_trials_and_status_counts_them(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    run_cli("submit", "smoke", "--record-only", "--experiment", "s", "--db", db)
    out = run_cli("cancel", "s", "--yes", "--db", db).stdout
    assert out.strip() == "61 trials cancelled"
    out = run_cli("status", "s", "--db", db).stdout
    assert "cancelled 61" in out and "pending 0" in out
    assert "eta: done" not in out and "eta: none: nothing is scheduled, 61 trials are cancelled" in out
    run_cli("cancel", "nope", "--yes", "--db", db, expect=2)


def test_cancel_asks_first_and_no_changes_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    db = f"sqlite:///{tmp_path / 'c.db'}"
    run_cli("submit", "smoke", "--record-only", "-e", "s", "--db", db)
    declined = CliRunner().invoke(main, ["cancel", "-e", "s", "--db", db], input="n\n")
    assert declined.exit_code == 1 and "cancel experiment 's': 61 pending or running trials" in declined.output
    assert _count(db, "SELECT count(*) FROM trials WHERE status = 'pending'") == 61
    accepted = CliRunner().invoke(main, ["cancel", "s", "--db", db], input="y\n")
    assert accepted.exit_code == 0 and "61 trials cancelled" in accepted.stdout


def test_retry_takes_failed_and_cancelled_together(tmp_path: Path) -> None:
    """`retry --failed --cancelled` resets both (Click's flag_value kept only the last flag)."""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    grid = tmp_path / "three.yaml"  # transfers from scratch: no source stage, so the noop kernel runs them all
    grid.write_text("fixed: {arch: tiny_resnet, method: retrain, source: scratch, dataset: digits, epochs: 1}\n"
                    "axes: {seed: [0, 1, 2]}\n")
    run_cli("submit", str(grid), "--record-only", "-e", "s", "--db", db)
    engine = create_engine(normalise_url(db))
    with engine.begin() as connection:
        connection.execute(text("UPDATE trials SET status = 'failed' WHERE id = 1"))
        connection.execute(text("UPDATE trials SET status = 'cancelled' WHERE id > 1"))
    engine.dispose()
    # Run options are checked before anything is reset, so the retry really runs: with the noop kernel.
    env = {**os.environ, DIAGNOSTICS_ENV: Diagnostics(kernel_override="noop").to_json()}
    result = subprocess.run([sys.executable, "-m", "cli", "retry", "-e", "s", "--failed", "--cancelled", "--quiet",
                             "--artifacts", str(tmp_path / "artifacts"), "--db", db],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 failed or cancelled trials reset to pending" in result.stdout, result.stdout
    assert _count(db, "SELECT count(*) FROM trials WHERE status = 'completed'") == 3
