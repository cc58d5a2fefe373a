"""Run options and the cluster are checked before anything is written: each refusal is one line,
exit 2, in seconds, and the database is unchanged (SQLite: byte-identical; PostgreSQL: row-identical).

The refusals that need no Ray run in-process through the CLI; the resource check starts a real
local Ray instance in a `python -m cli` process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from db.session import RTGRID_TABLES

ROOT = Path(__file__).resolve().parents[1]
GRID = """
name: preflight
fixed: {arch: tiny_resnet, method: finetune, source: scratch, dataset: digits, epochs: 1, subset_size: 100}
axes:
  seed: [0, 1, 2]
"""


def _snapshot(db_url: str) -> object:
    """What 'unchanged' means: the SQLite file's bytes (and its neighbours), or every row of every table."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        return sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in path.parent.iterdir()
                      if p.name.startswith(path.name))
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {table: sorted(map(tuple, connection.execute(text(f"SELECT * FROM {table}"))), key=repr)
                    for table in RTGRID_TABLES}
    finally:
        engine.dispose()


@pytest.fixture()
def recorded(db_url: str, tmp_path: Path) -> str:
    """A database holding experiment 'preflight': three pending trials, one of them failed."""
    grid = tmp_path / "preflight.yaml"
    grid.write_text(GRID)
    run_cli("submit", grid, "--record-only", "--db", db_url)
    from orchestrator.console.store import close_all, open_repository

    repo = open_repository(db_url, write=True)
    repo.fail(repo.trial_rows("preflight")[0].spec_hash, "boom")
    close_all()
    return db_url


REFUSED = [
    (["--stale-after", "nan"], "--stale-after nan: give a finite number >= 0"),
    (["--stale-after", "inf"], "--stale-after inf: give a finite number >= 0"),
    (["--stale-after", "-1"], "--stale-after -1.0: give a finite number >= 0"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial -1.0: give a finite number >= 0"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial 0.0: give a finite number > 0"),
    (["--gpus-per-trial", "inf"], "--gpus-per-trial inf: give a finite number >= 0"),
    (["--address", "127.0.0.1:1"], "cannot reach Ray at 127.0.0.1:1: Connection refused; start the Ray head "
                                   "(ray start --head --port 1)"),
    (["--address", "127.0.0.1:port"], "--address '127.0.0.1:port' is not HOST:PORT"),
]


@pytest.mark.parametrize("command", ["submit", "resume", "retry"])
@pytest.mark.parametrize(("options", "message"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_bad_run_options_change_nothing(recorded: str, tmp_path: Path, command: str, options: list[str],
                                        message: str) -> None:
    target = str(tmp_path / "preflight.yaml") if command == "submit" else "preflight"
    before = _snapshot(recorded)
    line = error_line(run_cli(command, target, "--db", recorded, "--artifacts", tmp_path / "art", *options,
                              expect=2))
    assert message in line, line
    assert _snapshot(recorded) == before
    assert not (tmp_path / "art").exists()


def test_a_new_database_is_not_created_for_refused_options(tmp_path: Path) -> None:
    grid = tmp_path / "preflight.yaml"
    grid.write_text(GRID)
    db = tmp_path / "new.sqlite"
    error_line(run_cli("submit", grid, "--db", f"sqlite:///{db}", "--stale-after", "nan", expect=2))
    error_line(run_cli("submit", grid, "--db", f"sqlite:///{db}", "--address", "127.0.0.1:1", expect=2))
    assert not db.exists()


def test_retry_over_ray_client_on_sqlite_is_refused_before_any_reset(db_backend: str, recorded: str,
                                                                      tmp_path: Path) -> None:
    before = _snapshot(recorded)
    result = run_cli("retry", "preflight", "--db", recorded, "--address", "ray://127.0.0.1:1", expect=2)
    line = error_line(result)
    if db_backend == "sqlite":
        assert "--address ray://… runs Tune's loop on the cluster's head node" in line and "PostgreSQL" in line
    else:  # PostgreSQL may serve a Ray Client run, but this cluster is not there
        assert "cannot reach Ray at ray://127.0.0.1:1" in line
    assert "reset" not in result.stdout
    assert _snapshot(recorded) == before


@pytest.mark.ray
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has GPUs")
def test_gpus_per_trial_on_a_machine_without_gpus(recorded: str, tmp_path: Path) -> None:
    """A local Ray instance starts, has no GPU, and the command says so at once (Tune would wait forever)."""
    before = _snapshot(recorded)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "cli", "resume", "preflight", "--db", recorded,
                           "--artifacts", str(tmp_path / "art"), "--gpus-per-trial", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines == ["rtgrid: error: --gpus-per-trial 1 but the Ray cluster has 0 GPUs: use --gpus-per-trial 0 "
                     "to train on CPUs, or --address a cluster with GPUs"], done.stderr
    assert _snapshot(recorded) == before
