"""`rtgrid export --format tensorboard`: an experiment's trials as TensorBoard runs (read-only on the database).

Layout under the output directory: one run per trial, `<experiment>/<trial id>-<spec hash[:12]>/`, holding
its per-epoch metrics as scalars `epoch/<metric>` (step = epoch), its final metrics as `final/<metric>`
(step = its epochs) and its key fields as HParams; `<experiment>/` itself holds the HParams
configuration (every key field and final metric), so TensorBoard's HParams view compares the trials.
Re-exporting replaces each run's event file: a run never holds two copies of a point.
The rows come from export.py's `export_frame` (one owner of what an export holds).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from db.models import EPOCH_METRICS, FINAL_METRICS, KEY_COLUMNS
from orchestrator.errors import UserError

EVENT_FILE_GLOB = "events.out.tfevents.*"
EPOCH_TAG = "epoch/{}"
FINAL_TAG = "final/{}"
# HParams: the spec's key fields (the grid's axes) and the source's display label.
HPARAM_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, "source_label")


def _tensorboard() -> Any:
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise UserError("--format tensorboard needs the tensorboard package: pip install 'rtgrid[tensorboard]'"
                        ) from None
    return event_pb2, summary_pb2, summary_v2, EventFileWriter


def run_name(trial_id: int, spec_hash: str) -> str:
    return f"{int(trial_id)}-{spec_hash.strip()[:12]}"


def _plain(value: Any) -> Any:
    """A value HParams can hold (bool, int, float, str), or None for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if hasattr(value, "item"):  # numpy / pandas scalars
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _fresh_writer(directory: Path, writer_class: Any) -> Any:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(EVENT_FILE_GLOB):  # only the event files this export writes
        old.unlink()
    return writer_class(str(directory))


def _scalars(event_pb2: Any, summary_pb2: Any, step: int, values: dict[str, float], wall: float) -> Any:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                                         for tag, value in values.items()])
    return event_pb2.Event(wall_time=wall, step=int(step), summary=summary)


def write_tensorboard(trials: pd.DataFrame, epochs: pd.DataFrame, experiment: str, directory: str | Path) -> int:
    """Write the runs of `trials` (export_frame "trials") with their `epochs` (export_frame "epochs");
    returns the number of runs written."""
    event_pb2, summary_pb2, summary_v2, EventFileWriter = _tensorboard()
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a directory")
    base = root / experiment
    wall = time.time()
    hparams = [summary_v2.HParam(name) for name in HPARAM_COLUMNS]
    metrics = [summary_v2.Metric(FINAL_TAG.format(m)) for m in FINAL_METRICS if trials[m].notna().any()]
    config = _fresh_writer(base, EventFileWriter)
    config.add_event(event_pb2.Event(wall_time=wall, summary=summary_v2.hparams_config_pb(hparams, metrics, wall)))
    config.close()
    by_trial = {trial_id: rows for trial_id, rows in epochs.groupby("trial_id", sort=False)}
    for trial in trials.to_dict("records"):
        name = run_name(trial["id"], str(trial["spec_hash"]))
        writer = _fresh_writer(base / name, EventFileWriter)
        values = {column: _plain(trial[column]) for column in HPARAM_COLUMNS}
        writer.add_event(event_pb2.Event(wall_time=wall, summary=summary_v2.hparams_pb(
            {key: value for key, value in values.items() if value is not None}, trial_id=name,
            start_time_secs=wall)))
        rows = by_trial.get(trial["id"])
        last = 0
        for row in ([] if rows is None else rows.to_dict("records")):
            last = max(last, int(row["epoch"]))
            points = {EPOCH_TAG.format(m): row[m] for m in EPOCH_METRICS if _plain(row[m]) is not None}
            if points:
                writer.add_event(_scalars(event_pb2, summary_pb2, int(row["epoch"]), points, wall))
        finals = {FINAL_TAG.format(m): trial[m] for m in FINAL_METRICS if _plain(trial[m]) is not None}
        if finals:
            writer.add_event(_scalars(event_pb2, summary_pb2, _plain(trial["epochs"]) or last, finals, wall))
        writer.close()
    return len(trials)
