"""What the dashboard shows, read through the same read-only access as `rtgrid query`.

Every function takes an open ReadOnlyDatabase and returns a DataFrame (or a Report). Numbers come
from the results code (frames.py, reports.py, plots.py's frames, stats.py); nothing here computes a
mean or a CI of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from db.models import EPOCH_METRICS, FINAL_METRICS, FINISHED, KEY_COLUMNS, STATUSES, TrialStatus
from orchestrator.results.frames import add_source_labels, experiment_trials_sql, nullable_ints, require_experiment
from orchestrator.results.query import ReadOnlyDatabase

# A grid cell: every key field but the seed (the seeds are a cell's replicates).
CELL_COLUMNS: tuple[str, ...] = tuple(column for column in KEY_COLUMNS if column != "seed")
# The heatmap's axes split the cell's fields: what was trained (rows) x where / how much (columns).
ROW_FIELDS: tuple[str, ...] = ("kind", "arch", "source_label", "method")
COLUMN_FIELDS: tuple[str, ...] = tuple(c for c in CELL_COLUMNS if c not in ("kind", "arch", "source", "method"))
# The trial table's columns: identity, status, key fields, final metrics.
TRIAL_COLUMNS: tuple[str, ...] = ("id", "status", *KEY_COLUMNS, "source_label", *FINAL_METRICS, "attempts", "error")
STATUS_METRIC = "status"  # the heatmap's "finished share" colouring, next to the final metrics


def experiments_frame(db: ReadOnlyDatabase) -> pd.DataFrame:
    """One row per experiment: name, grid, created_at, a count per status, total, finished, progress (0-1)."""
    counts = db.frame("SELECT e.name, e.grid, e.created_at, t.status, COUNT(t.id) AS n FROM experiments e "
                      "LEFT JOIN experiment_trials et ON et.experiment_id = e.id "
                      "LEFT JOIN trials t ON t.id = et.trial_id GROUP BY e.name, e.grid, e.created_at, t.status")
    if counts.empty:
        return pd.DataFrame(columns=["name", "grid", "created_at", *STATUSES, "total", "finished", "progress"])
    wide = counts.pivot_table(index=["name", "grid", "created_at"], columns="status", values="n",
                              aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=list(STATUSES), fill_value=0).reset_index()
    wide.columns.name = None
    wide[list(STATUSES)] = wide[list(STATUSES)].astype(int)
    wide["total"] = wide[list(STATUSES)].sum(axis=1)
    wide["finished"] = wide[[str(s) for s in FINISHED]].sum(axis=1)
    wide["progress"] = (wide["finished"] / wide["total"].where(wide["total"] > 0)).fillna(0.0)
    wide["created_at"] = wide["created_at"].astype(str)
    return wide.sort_values("name").reset_index(drop=True)


def trials_frame(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """The experiment's trials (TRIAL_COLUMNS, by id), with the sources' display labels."""
    require_experiment(db, experiment)
    columns = ", ".join(f"t.{c}" for c in TRIAL_COLUMNS if c != "source_label")
    frame = db.frame(experiment_trials_sql(columns, "ORDER BY t.id"), {"experiment": experiment})
    frame = add_source_labels(frame, db)
    return nullable_ints(frame[list(TRIAL_COLUMNS)], ("blocks", "subset_size", "seed", "epochs", "attempts"))


def _shown(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else str(value)


def _varying(trials: pd.DataFrame, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The fields that take more than one value in `trials` (at least the first: a label is never empty)."""
    varying = tuple(f for f in fields if trials[f].astype(object).map(_shown).nunique() > 1)
    return varying or fields[:1]


def constant_fields_text(trials: pd.DataFrame) -> str:
    """The cell fields every trial shares, said once instead of in every heatmap label."""
    shown = set(_varying(trials, ROW_FIELDS)) | set(_varying(trials, COLUMN_FIELDS))
    same = [f"{f}={_shown(trials[f].iloc[0])}" for f in (*ROW_FIELDS, *COLUMN_FIELDS) if f not in shown]
    return ("every cell: " + " · ".join(same)) if same and len(trials) else ""


def cell_labels(trials: pd.DataFrame) -> pd.DataFrame:
    """`trials` with `row` and `column`: the heatmap's labels of each trial's cell (the one place they are
    made), naming only the fields that vary within these trials."""
    def label(fields: tuple[str, ...]) -> list[str]:
        return [" · ".join(f"{field}={_shown(value)}" for field, value in zip(fields, values, strict=True))
                for values in trials[list(fields)].itertuples(index=False, name=None)]

    return trials.assign(row=label(_varying(trials, ROW_FIELDS)), column=label(_varying(trials, COLUMN_FIELDS)))


def trials_in_cell(trials: pd.DataFrame, row: str, column: str) -> pd.DataFrame:
    labelled = cell_labels(trials)
    return trials[(labelled["row"] == row) & (labelled["column"] == column)]


def cells_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per grid cell (`row`, `column` labels): trial count per status, `trials`, the finished
    share (STATUS_METRIC), and the mean of each final metric over its completed trials."""
    cells = []
    for (row, column), group in cell_labels(trials).groupby(["row", "column"], sort=True):
        counts = group["status"].value_counts()
        completed = group[group["status"] == TrialStatus.COMPLETED]
        cell: dict[str, Any] = {"row": row, "column": column, "trials": len(group)}
        cell.update({status: int(counts.get(status, 0)) for status in STATUSES})
        cell[STATUS_METRIC] = sum(cell[str(s)] for s in FINISHED) / len(group)
        cell.update({metric: completed[metric].astype(float).mean() for metric in FINAL_METRICS})
        cells.append(cell)
    return pd.DataFrame(cells, columns=["row", "column", "trials", *STATUSES, STATUS_METRIC, *FINAL_METRICS])


def trial_record(db: ReadOnlyDatabase, trial_id: int) -> dict[str, Any] | None:
    """One trial's row (key fields, status, finals, spec_json), or None when there is none."""
    frame = db.frame("SELECT t.* FROM trials t WHERE t.id = :trial_id", {"trial_id": int(trial_id)})
    if frame.empty:
        return None
    frame = add_source_labels(frame, db)
    return {key: None if pd.isna(value) else value for key, value in frame.iloc[0].to_dict().items()}


def epochs_frame(db: ReadOnlyDatabase, trial_id: int) -> pd.DataFrame:
    """One trial's per-epoch metrics (EPOCH_METRICS), by epoch."""
    columns = ", ".join(f"m.{c}" for c in ("epoch", *EPOCH_METRICS))
    return db.frame(f"SELECT {columns} FROM epoch_metrics m WHERE m.trial_id = :trial_id ORDER BY m.epoch",
                    {"trial_id": int(trial_id)})


# --- the papers' figures, as data: plots.py's frame functions (mean, n, ci95 per point) ---------------

def _accuracy_delta(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    from orchestrator.results.plots import accuracy_delta_frame

    frame = accuracy_delta_frame(db, experiment)
    return frame.assign(x=frame["subset_size"].map(lambda v: "full" if pd.isna(v) else str(int(v))),
                        series=frame["source_label"] + " − natural, " + frame["dataset"].astype(str))


def _learning_curve(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    from orchestrator.results.plots import learning_curve_frame

    frame, _size = learning_curve_frame(db, experiment)
    return frame.assign(x=frame["epoch"], series=frame["source_label"] + ", " + frame["dataset"].astype(str))


def _blocks(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    from orchestrator.results.reports import blocks_frame, subset_label

    frame = blocks_frame(db, experiment, caller="figure blocks")
    return frame.assign(x=frame["blocks"], series=frame["source_label"] + ", " + frame["dataset"].astype(str) + ", "
                        + frame["subset_size"].map(subset_label) + " images")


# name -> (figure data with x, series, mean, n, ci95; y-axis title; x-axis title)
FIGURES: dict[str, tuple[Callable[[ReadOnlyDatabase, str], pd.DataFrame], str, str]] = {
    "accuracy-delta": (_accuracy_delta, "Δ test accuracy, robust − natural (pp)", "training images"),
    "learning-curve": (_learning_curve, "test accuracy (%)", "epoch"),
    "blocks": (_blocks, "test accuracy (%)", "fine-tuned residual blocks"),
}
