"""`rtgrid export`: an experiment's trials or per-epoch metrics as CSV or Parquet, or both as TensorBoard
runs (tensorboard.py writes those), all read-only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from db.models import DERIVED_COLUMNS, EPOCH_METRICS, KEY_COLUMNS
from orchestrator.errors import UserError
from orchestrator.results.frames import add_source_labels, experiment_trials_sql, nullable_ints, require_experiment
from orchestrator.results.query import Database, reading

TABLES = ("trials", "epochs")
FORMATS = ("csv", "parquet")  # one table to one file
RUN_FORMATS = ("tensorboard",)  # the trials and their epochs to a directory of runs
# From the schema: a new key column or epoch metric is exported without an edit here.
_TRIAL_KEYS = ", ".join(f"t.{column}" for column in ("spec_hash", "status", *KEY_COLUMNS, *DERIVED_COLUMNS))
_EPOCH_COLUMNS = ", ".join(f"m.{column}" for column in ("epoch", *EPOCH_METRICS, "recorded_at"))


def export_frame(experiment: str, table: str = "trials", db: Database | Any = None) -> pd.DataFrame:
    """trials: every `trials` column of the experiment's trials plus `source_label`, by trial id.
    epochs: one row per (trial, epoch): trial_id, the trial's key columns, then the epoch's metrics.
    Accuracies, ASR and ER are fractions."""
    if table not in TABLES:
        raise UserError(f"unknown table {table!r} (known: {', '.join(TABLES)})")
    with reading(db) as database:
        require_experiment(database, experiment)
        params = {"experiment": experiment}
        if table == "trials":
            frame = database.frame(experiment_trials_sql("t.*", "ORDER BY t.id"), params)
        else:
            sql = (f"SELECT m.trial_id, {_TRIAL_KEYS}, {_EPOCH_COLUMNS} FROM epoch_metrics m "
                   "JOIN trials t ON t.id = m.trial_id JOIN experiment_trials et ON et.trial_id = t.id "
                   "JOIN experiments e ON e.id = et.experiment_id WHERE e.name = :experiment "
                   "ORDER BY m.trial_id, m.epoch")
            frame = database.frame(sql, params)
        frame = add_source_labels(frame, database)
    frame.insert(list(frame.columns).index("source") + 1, "source_label", frame.pop("source_label"))
    if "spec_hash" in frame:
        frame["spec_hash"] = frame["spec_hash"].astype(str).str.strip()
    return nullable_ints(frame, ("blocks", "subset_size", "seed", "epochs", "epoch", "attempts"))


def _output_file(path: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a directory: give a file name with -o")
    if not target.parent.exists():
        raise UserError(f"output directory {target.parent} does not exist")
    return target


def export_format(fmt: str | None, path: str | None) -> str:
    """The format asked for, else the one the output file's extension names (.parquet, else CSV); a file
    whose extension names the other table format is refused rather than written in the wrong one."""
    named = {f".{f}": f for f in FORMATS}.get(Path(path).suffix.lower()) if path else None
    if fmt is None:
        return named or "csv"
    if named is not None and named != fmt and fmt in FORMATS:
        raise UserError(f"--format {fmt} but {path} ends in .{named}: drop --format, or name the file .{fmt}")
    return fmt


def write_export(frame: pd.DataFrame, fmt: str, path: str | None) -> str | None:
    """Write `frame` to `path`; CSV without a path is returned as text (for stdout)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "parquet":
        if not path:
            raise UserError("parquet is binary: give an output file with -o PATH")
        target = _output_file(path)
        table = frame.copy()
        for column in table.columns:  # SQLite gives timestamps as text, PostgreSQL as datetimes: one type
            if column.endswith("_at"):
                table[column] = pd.to_datetime(table[column], utc=True, errors="coerce", format="mixed")
        table.to_parquet(target, index=False)
        return None
    if path:
        target = _output_file(path)
        frame.to_csv(target, index=False)
        return None
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def export_runs(experiment: str, fmt: str, directory: str | None, db: Database | Any = None) -> int:
    """The experiment's trials with their epochs as runs under `directory` (idempotent); the run count."""
    if fmt not in RUN_FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(RUN_FORMATS)})")
    if not directory:
        raise UserError(f"{fmt} writes a directory of runs: give it with -o DIR")
    from orchestrator.results.tensorboard import write_tensorboard

    with reading(db) as database:
        trials = export_frame(experiment, "trials", database)
        epochs = export_frame(experiment, "epochs", database)
    return write_tensorboard(trials, epochs, experiment, directory)
