"""The `rtgrid` command line: dry-run planning at full scale, status, and one-line errors."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from cli import main
from db.session import normalise_url


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _count(db_url: str, sql: str) -> int:
    engine = create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_grid_show_count_and_breakdown() -> None:
    assert _invoke("grid", "show", "utrera2021", "--count")[1].strip() == "14400"
    code, out, _ = _invoke("grid", "show", "utrera2021")
    assert code == 0
    assert "4 source x 6 dataset x 4 blocks" in out and "150 (subset, seed) pairs per cell" in out
    code, out, _ = _invoke("grid", "list")
    assert code == 0 and "utrera2021" in out and "14400" in out and "smoke" in out


@pytest.mark.slow
def test_dry_run_of_14400_specs_twice(db_url: str) -> None:
    started = time.perf_counter()
    code, out, _ = _invoke("submit", "utrera2021", "--dry-run", "--db", db_url)
    seconds = time.perf_counter() - started
    print(f"dry-run of 14,400 specs: {seconds:.1f}s")
    assert code == 0 and "14400 new" in out
    assert _count(db_url, "SELECT count(*) FROM trials") == 14400
    assert _count(db_url, "SELECT count(*) FROM trials WHERE status = 'pending'") == 14400
    code, out, _ = _invoke("submit", "utrera2021", "--dry-run", "--db", db_url)
    assert code == 0 and "0 new" in out and "nothing new to record" in out
    assert _count(db_url, "SELECT count(*) FROM trials") == 14400
    # A second experiment over a subset of the same specs links, never duplicates.
    code, out, _ = _invoke("submit", "utrera2021-code", "--dry-run", "--db", db_url)
    assert code == 0
    assert _count(db_url, "SELECT count(*) FROM experiments") == 2
    code, out, _ = _invoke("status", "--db", db_url)
    assert code == 0 and "pending" in out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


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
def test_bad_input_is_one_line_exit_2_and_leaves_db_unchanged(tmp_path: Path, args: list[str], message: str) -> None:
    files = {
        "{bad}": "fixed: [1, 2\n",
        "{axis}": "fixed: {arch: x}\naxes: {colour: [red]}\n",
        "{type}": "fixed: {arch: x, method: finetune, epochs: one, source: scratch, dataset: d}\naxes: {seed: [0]}\n",
    }
    db_file = tmp_path / "x.db"
    code, _, _ = _invoke("submit", "smoke", "--dry-run", "--db", f"sqlite:///{db_file}")
    assert code == 0
    before = _file_digest(db_file)
    resolved = []
    for arg in args:
        if arg in files:
            path = tmp_path / "grid.yaml"
            path.write_text(files[arg])
            arg = str(path)
        resolved.append(arg)
    if resolved[0] != "grid":  # grid commands never open the database
        resolved += ["--db", f"sqlite:///{db_file}"]
    code, out, err = _invoke(*resolved)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _file_digest(db_file) == before


def test_unreachable_database_is_one_line() -> None:
    code, _, err = _invoke("status", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cancel_marks_pending_trials_and_status_counts_them(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert _invoke("submit", "smoke", "--dry-run", "--experiment", "s", "--db", db)[0] == 0
    code, out, _ = _invoke("cancel", "s", "--db", db)
    assert code == 0 and out.strip() == "61 trials cancelled"
    code, out, _ = _invoke("status", "s", "--db", db)
    assert code == 0 and "cancelled 61" in out and "pending 0" in out and "eta: done" in out
    assert _invoke("cancel", "nope", "--db", db)[0] == 2
