"""The papers' tables as reports: each a function returning a pandas DataFrame (long form, DB
units: fractions) plus a renderer (display tables in %, pp for ER).

Every report reads the database read-only, aggregates with one SQL query per table plus pandas
(never one query per trial), and takes its CIs from orchestrator.results.stats.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.errors import UserError
from orchestrator.results import stats
from orchestrator.results.frames import (
    add_source_labels,
    completed_transfers_sql,
    experiment_trials_sql,
    nullable_ints,
    pretrained_sql,
    require_experiment,
    require_one_trial_per_seed,
    require_rows,
    source_order,
    trial_frame,
    trial_specs,
)
from orchestrator.results.query import Database, ReadOnlyDatabase, reading, text_table
from orchestrator.results.study import study_report
from workers.trainable import METHODS

FORMATS = ("table", "markdown", "latex", "csv", "json")
DEFAULT_BLOCKS = 3
FULL_LABEL = "full"
# Renofeation's table order: the catalog's transfer methods in its order, then the ablation variants
# (grids.reno_variants names, labelled by _variant), then anything else alphabetically.
ABLATION_ORDER = ("renofeation-no-dropout", "renofeation-no-swa", "delta-adv")
METHOD_ORDER: tuple[str, ...] = (*(name for name, m in METHODS.items() if m.kind == "transfer"), *ABLATION_ORDER)


@dataclass
class Report:
    """A computed report: `data` is the long-form DataFrame (fractions), `tables` what is shown."""

    name: str
    title: str
    data: pd.DataFrame
    tables: list[tuple[str, pd.DataFrame]]
    notes: list[str] = field(default_factory=list)
    sql: str | None = None


# --- formatting helpers ----------------------------------------------------------------------


def subset_label(value: Any) -> str:
    return FULL_LABEL if value is None or pd.isna(value) else str(int(value))


def subset_sort_key(value: Any) -> float:
    """Subset sizes sort numerically with the full training set last."""
    return math.inf if value is None or pd.isna(value) else float(value)


def pct(mean: float, ci: float | None = None, digits: int = 1, best: bool = False) -> str:
    """A fraction as a percentage, with ± CI half-width when there is one; '*' marks the best."""
    if mean is None or pd.isna(mean):
        return ""
    text = f"{100 * mean:.{digits}f}"
    if ci is not None and not pd.isna(ci):
        text += f" ± {100 * ci:.{digits}f}"
    return text + (" *" if best else "")


def pct_n(mean: float, ci: float | None, n: Any, best: bool = False) -> str:
    """pct with the cell's number of runs in parentheses: `48.5 ± 2.1 (10) *`."""
    text = pct(mean, ci)
    if text and n is not None and not pd.isna(n):
        text += f" ({int(n)})"
    return text + (" *" if best and text else "")


def _sorted_labels(labels: Sequence[str]) -> list[str]:
    return sorted(dict.fromkeys(labels), key=source_order)


# --- utrera-table7 -----------------------------------------------------------------------------

TABLE7_CELL = ("dataset", "subset_size", "source")
TABLE7_WHERE = (f"AND {completed_transfers_sql()} AND t.blocks = :blocks "
                "AND t.test_acc IS NOT NULL")
# n != seeds flags a cell with two trials of one seed, without fetching the trials (the usual case)
TABLE7_SQL = experiment_trials_sql(
    "t.dataset, t.subset_size, t.source, COUNT(t.test_acc) AS n, COUNT(DISTINCT t.seed) AS seeds, "
    "SUM(t.test_acc) AS total, SUM(t.test_acc * t.test_acc) AS total_sq",
    f"{TABLE7_WHERE} GROUP BY t.dataset, t.subset_size, t.source",
)


def table7_frame(db: ReadOnlyDatabase, experiment: str, blocks: int = DEFAULT_BLOCKS) -> pd.DataFrame:
    """Utrera et al. Table 7: final test accuracy per (target, subset size, source) at `blocks`.

    One aggregating SQL query (count, sum, sum of squares per cell) and pandas for the
    t-interval. Columns: dataset, subset_size (<NA> = full), source, source_label, n, mean, sd,
    ci95, best (the highest mean of its (dataset, subset_size) row).
    """
    require_experiment(db, experiment)
    frame = db.frame(TABLE7_SQL, {"experiment": experiment, "blocks": int(blocks)})
    frame = nullable_ints(frame, ("subset_size",))
    require_rows(frame, f"completed transfer trials with blocks = {blocks}", experiment)
    if (frame["n"] != frame["seeds"]).any():
        trials = trial_frame(db, experiment, "t.dataset, t.subset_size, t.source, t.seed, t.spec_json",
                              TABLE7_WHERE, {"blocks": int(blocks)})
        require_one_trial_per_seed(trials, TABLE7_CELL, "report utrera-table7")
    frame = stats.from_moments(add_source_labels(frame, db))
    row_best = frame.groupby(["dataset", frame["subset_size"].fillna(-1)])["mean"].transform("max")
    frame["best"] = np.isclose(frame["mean"], row_best, rtol=0, atol=1e-12)
    frame = frame.sort_values(["dataset", "subset_size", "source_label"], na_position="last",
                              key=lambda c: c.map(source_order) if c.name == "source_label" else c)
    return frame[["dataset", "subset_size", "source", "source_label", "n", "mean", "sd", "ci95", "best"]
                 ].reset_index(drop=True)


def _wide(frame: pd.DataFrame, rows: Sequence[str], column: str, cell: Callable[[pd.Series], str],
          column_order: Sequence[Any], row_labels: dict[str, str]) -> pd.DataFrame:
    """Pivot a long frame into a display table of strings (rows keep the frame's order)."""
    keys = list(dict.fromkeys(tuple(r) for r in frame[list(rows)].itertuples(index=False, name=None)))
    cells: dict[tuple[Any, ...], dict[Any, str]] = {k: {} for k in keys}
    for _, row in frame.iterrows():
        cells[tuple(row[r] for r in rows)][row[column]] = cell(row)
    records = []
    for key in keys:
        record = {row_labels.get(r, r): (subset_label(v) if r == "subset_size" else v) for r, v in zip(rows, key,
                                                                                                         strict=True)}
        record.update({str(c): cells[key].get(c, "") for c in column_order})
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table.attrs["keys"] = [row_labels.get(r, r) for r in rows]  # the row-label columns (several experiments join on)
    return table


def render_table7(frame: pd.DataFrame, blocks: int) -> list[tuple[str, pd.DataFrame]]:
    order = _sorted_labels(frame["source_label"].tolist())
    table = _wide(frame, ["dataset", "subset_size"], "source_label",
                  lambda r: pct_n(r["mean"], r["ci95"], r["n"], best=bool(r["best"])), order,
                  {"dataset": "target", "subset_size": "images"})
    return [(f"test accuracy (%) at the last epoch, {blocks} fine-tuned blocks: mean ± 95% CI over seeds (runs) "
             "(* = best source of the row)", table)]


def utrera_table7(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None) -> Report:
    blocks = DEFAULT_BLOCKS if blocks is None else blocks
    frame = table7_frame(db, experiment, blocks)
    seeds = frame["n"]
    notes = [f"runs per cell: {int(seeds.min())}–{int(seeds.max())}" if seeds.min() != seeds.max()
             else f"runs per cell: {int(seeds.min())}"]
    return Report("utrera-table7", f"Utrera et al. Table 7 — {experiment}", frame, render_table7(frame, blocks),
                  notes)


# --- utrera-blocks ------------------------------------------------------------------------------


def blocks_frame(db: ReadOnlyDatabase, experiment: str, caller: str = "report utrera-blocks") -> pd.DataFrame:
    """Utrera et al. Fig. 4 / 11: final test accuracy by fine-tuned blocks per target, subset size
    and source. Columns: dataset, subset_size, source_label, blocks, n, mean, sd, ci95."""
    frame = trial_frame(db, experiment,
                         "t.dataset, t.subset_size, t.source, t.blocks, t.seed, t.test_acc, t.spec_json",
                         f"AND {completed_transfers_sql()} AND t.blocks IS NOT NULL "
                         "AND t.test_acc IS NOT NULL")
    require_rows(frame, "completed transfer trials with a block setting", experiment)
    require_one_trial_per_seed(frame, ("dataset", "subset_size", "source", "blocks"), caller)
    frame = add_source_labels(frame, db)
    summary = stats.summarize(frame, ["dataset", "subset_size", "source_label", "blocks"], "test_acc")
    summary = nullable_ints(summary, ("subset_size", "blocks"))
    summary = summary.sort_values(["dataset", "subset_size", "source_label", "blocks"], na_position="last",
                                  key=lambda c: c.map(source_order) if c.name == "source_label" else c)
    return summary.reset_index(drop=True)


def utrera_blocks(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None) -> Report:
    frame = blocks_frame(db, experiment)
    order = sorted(frame["blocks"].dropna().unique().tolist())
    table = _wide(frame, ["dataset", "subset_size", "source_label"], "blocks",
                  lambda r: pct_n(r["mean"], r["ci95"], r["n"]), order,
                  {"dataset": "target", "subset_size": "images", "source_label": "source"})
    table = table.rename(columns={str(b): f"{b} blocks" for b in order})
    table.attrs["keys"] = ["target", "images", "source"]
    return Report("utrera-blocks", f"Utrera et al. Fig. 4 / 11 — {experiment}", frame,
                  [("test accuracy (%) by number of fine-tuned blocks: mean ± 95% CI over seeds (runs)", table)])


# --- renofeation ---------------------------------------------------------------------------------


def method_variant(method: str, params: dict[str, Any]) -> str:
    """The Renofeation grid's variant name of a trial (ablations share a method, differ in params)."""
    traits = METHODS.get(method)
    if traits is not None and traits.swa:  # renofeation: its dropout and SWA stage default on; 0 = the ablation
        parts = [method]
        if not params.get("dropout"):
            parts.append("no-dropout")
        if not params.get("swa_epochs"):
            parts.append("no-swa")
        return "-".join(parts)
    if params.get("adv_steps"):
        return f"{method}-adv"
    return method


def _method_key(name: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def renofeation_frame(db: ReadOnlyDatabase, experiment: str, caller: str = "report renofeation") -> pd.DataFrame:
    """Renofeation Tables 2 and 4: clean test accuracy and ASR by (arch, method variant) × dataset,
    plus an `avg` pseudo-dataset (mean of the per-dataset means of that row).
    Columns: arch, method, dataset, metric (clean_acc | asr), n, mean, sd, ci95."""
    frame = trial_frame(db, experiment, "t.arch, t.dataset, t.method, t.seed, t.test_acc, t.asr, t.spec_json",
                         f"AND {completed_transfers_sql()}")
    require_rows(frame, "completed transfer trials", experiment)
    frame["method"] = [method_variant(m, json.loads(s).get("params") or {})
                       for m, s in zip(frame["method"], frame["spec_json"], strict=True)]
    require_one_trial_per_seed(frame, ("arch", "method", "dataset"), caller)
    parts = []
    for metric, column in (("clean_acc", "test_acc"), ("asr", "asr")):
        summary = stats.summarize(frame, ["arch", "method", "dataset"], column)
        summary.insert(3, "metric", metric)
        parts.append(summary)
        if not summary.empty:
            average = summary.groupby(["arch", "method"], sort=False)["mean"].agg(["mean", "count"]).reset_index()
            average = average.rename(columns={"count": "n"})
            average["dataset"], average["metric"] = "avg", metric
            average["sd"], average["ci95"] = np.nan, np.nan
            parts.append(average[summary.columns])
    out = pd.concat(parts, ignore_index=True)
    out["_m"] = out["method"].map(_method_key)
    out["_d"] = out["dataset"].map(lambda d: (d == "avg", d))
    out = out.sort_values(["metric", "arch", "_m", "_d"]).drop(columns=["_m", "_d"])
    return out.reset_index(drop=True)


def renofeation(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None) -> Report:
    frame = renofeation_frame(db, experiment)
    datasets = sorted(d for d in frame["dataset"].unique() if d != "avg") + ["avg"]
    tables = []
    for metric, caption in (("clean_acc", "clean test accuracy (%)"), ("asr", "attack success rate, ASR (%)")):
        part = frame[frame["metric"] == metric]
        if part.empty:
            continue
        tables.append((f"{caption}: mean ± 95% CI over seeds (runs); avg = mean over datasets (datasets)",
                       _wide(part, ["arch", "method"], "dataset", lambda r: pct_n(r["mean"], r["ci95"], r["n"]),
                             datasets, {})))
    return Report("renofeation", f"Renofeation Tables 2 and 4 — {experiment}", frame, tables)


# --- er --------------------------------------------------------------------------------------------

ER_SQL = (
    "SELECT t.dataset, t.ood, t.arch, t.source, t.method, t.init, t.seed, t.id AS trial_id, m.epoch, m.test_acc, "
    "m.er "
    "FROM epoch_metrics m JOIN trials t ON t.id = m.trial_id "
    "JOIN experiment_trials et ON et.trial_id = t.id JOIN experiments e ON e.id = et.experiment_id "
    f"WHERE e.name = :experiment AND {completed_transfers_sql()} "
    "AND m.er IS NOT NULL AND m.test_acc IS NOT NULL"
)
ER_BINS = 100
# An ER group pools different models on purpose (Andreassen's testbed of runs): what must not be
# pooled is the same run twice (e.g. computed by two kernel versions).
ER_POOLED = ("source", "source_checksum", "method", "blocks", "subset_size", "epochs", "params")


ER_BASELINES_SQL = (
    "SELECT DISTINCT b.id AS baseline_id, b.id_dataset, b.ood_dataset, b.protocol_key, b.fitted_from, b.testbed, "
    "b.transform, b.n_points, b.slope, b.slope_ci_low, b.slope_ci_high, b.intercept, b.r "
    "FROM er_baselines b JOIN epoch_metrics m ON m.er_baseline_id = b.id JOIN trials t ON t.id = m.trial_id "
    "JOIN experiment_trials et ON et.trial_id = t.id JOIN experiments e ON e.id = et.experiment_id "
    "WHERE e.name = :experiment AND m.er IS NOT NULL ORDER BY b.id"
)


def slope_text(slope: float, low: float | None, high: float | None) -> str:
    """slope ± the half-width of its 95% CI (symmetric under OLS), or the slope alone when unknown."""
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{slope:.3f} (CI unknown)"
    return f"{slope:.3f} ± {(high - low) / 2:.3f}"


def er_baselines_frame(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """The baselines behind the experiment's stored per-epoch ER values, one row each."""
    return db.frame(ER_BASELINES_SQL, {"experiment": experiment})


def er_baseline_lines(frame: pd.DataFrame) -> list[str]:
    """One line per baseline: id, pair, protocol, fitted_from, n, slope ± 95% CI, r."""
    lines = []
    for row in frame.itertuples(index=False):
        r = "unknown" if row.r is None or pd.isna(row.r) else f"{row.r:.3f}"
        lines.append(f"baseline {row.baseline_id}: {row.id_dataset}->{row.ood_dataset} {row.protocol_key} "
                     f"{row.transform} from {row.fitted_from}, n={row.n_points}, slope "
                     f"{slope_text(row.slope, row.slope_ci_low, row.slope_ci_high)} (95% CI), r={r}")
    return lines


def er_frame(db: ReadOnlyDatabase, experiment: str, bins: int = ER_BINS, caller: str = "report er") -> pd.DataFrame:
    """Andreassen et al. Fig. 1 / 3: per-epoch ER against ID accuracy, binned into `bins`
    equal-width bins of ID accuracy over [0, 1] (workers.metrics.binned_er), the mean over every
    checkpoint (epoch) of every run in the bin, per (dataset, ood, arch, init); init is the trials'
    column: pretrained, random (Andreassen's random init: the ER testbed) or distilled (random weights
    and a pre-trained teacher, e.g. renofeation: a group of its own, not random init in the ER sense).
    Columns: dataset, ood, arch, init, runs (of the group), id_low, id_high, mean_er, checkpoints
    (epochs in the bin)."""
    from workers.trainable import binned_er

    require_experiment(db, experiment)
    frame = db.frame(ER_SQL, {"experiment": experiment})
    require_rows(frame, "epochs with an ER value (fit a baseline: rtgrid er fit)", experiment)
    runs = frame.drop_duplicates("trial_id").merge(
        trial_specs(db, experiment, f"AND {completed_transfers_sql()}"), on="trial_id")
    require_one_trial_per_seed(runs, ("dataset", "ood", "arch", "init"), caller, pooled=ER_POOLED)
    records = []
    for (dataset, ood, arch, init), group in frame.groupby(["dataset", "ood", "arch", "init"], sort=True):
        runs = group["trial_id"].nunique()
        for low, high, mean, count in binned_er(group["test_acc"].to_numpy(float), group["er"].to_numpy(float),
                                                bins):
            records.append({"dataset": dataset, "ood": ood, "arch": arch, "init": init, "runs": runs,
                            "id_low": low, "id_high": high, "mean_er": mean, "checkpoints": count})
    return pd.DataFrame.from_records(records)


def er_report(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None) -> Report:
    frame = er_frame(db, experiment)
    frame = frame.assign(group=[f"{d}->{o} {a} {i}" for d, o, a, i in
                                zip(frame["dataset"], frame["ood"], frame["arch"], frame["init"], strict=True)])
    frame["id_range"] = [f"{100 * lo:.0f}–{100 * hi:.0f}" for lo, hi in zip(frame["id_low"], frame["id_high"],
                                                                              strict=True)]
    groups = list(dict.fromkeys(frame["group"]))
    ordered = frame.sort_values("id_low")
    table = _wide(ordered, ["id_range"], "group",
                  lambda r: f"{100 * r['mean_er']:+.2f} ({int(r['checkpoints'])})", groups,
                  {"id_range": "ID acc (%)"})
    data = frame.drop(columns=["group", "id_range"])
    fits = er_baselines_frame(db, experiment)
    fits_table = pd.DataFrame({
        "baseline": fits["baseline_id"].astype(int),
        "ID->OOD": [f"{i}->{o}" for i, o in zip(fits["id_dataset"], fits["ood_dataset"], strict=True)],
        "protocol": fits["protocol_key"],
        "fitted from": fits["fitted_from"],
        "n": fits["n_points"].astype(int),
        "slope ± 95% CI": [slope_text(a, lo, hi) for a, lo, hi in
                           zip(fits["slope"], fits["slope_ci_low"], fits["slope_ci_high"], strict=True)],
        "r": ["unknown" if pd.isna(r) else f"{r:.3f}" for r in fits["r"]],
    })
    return Report("er", f"Effective robustness during training (Andreassen et al. Fig. 1 / 3) — {experiment}",
                  data, [("mean ER (pp) of the checkpoints in each 1%-wide ID-accuracy bin (checkpoints)", table),
                         ("the ER baselines behind these values (slope in logit/probit space)", fits_table)])


# --- demo -------------------------------------------------------------------------------------------


def demo_sql(experiment: str) -> str:
    """The SQL a user types for the demo's first table (source name = the source trial's method)."""
    name = experiment.replace("'", "''")
    return (
        "SELECT r.dataset AS target, COALESCE(s.method, r.source) AS source, r.subset_size,\n"
        "       COUNT(*) AS runs, ROUND(CAST(100 * AVG(r.test_acc) AS NUMERIC), 1) AS test_acc_pct\n"
        "FROM results r LEFT JOIN trials s ON s.spec_hash = substr(r.source, 6)\n"
        f"WHERE r.experiment = '{name}' AND {completed_transfers_sql('r')}\n"
        f"  AND {pretrained_sql('r')} AND r.test_acc IS NOT NULL\n"
        "GROUP BY r.dataset, COALESCE(s.method, r.source), r.subset_size\n"
        "ORDER BY 1, 2, 3"
    )


def demo_frames(db: ReadOnlyDatabase, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The demo's closing data: (accuracy, robustness, sql).

    accuracy: dataset, source_label, subset_size, n, mean, sd, ci95 — final test accuracy of the
    pre-trained transfers (init = pretrained: the random-init ER testbed and the distilled runs left out),
    mean over seeds and block settings.
    robustness: dataset, source_label, and per metric (test_acc, asr, er) its n / mean / ci95
    columns (`asr_mean`, `er_mean`, …) — mean over every transfer of that source.
    """
    frame = trial_frame(db, experiment,
                         "t.dataset, t.source, t.subset_size, t.blocks, t.seed, t.test_acc, t.asr, t.er, t.spec_json",
                         f"AND {completed_transfers_sql()} AND {pretrained_sql()}")
    require_rows(frame, "completed transfer trials", experiment)
    # table 1 pools block settings, table 2 block settings and subset sizes (their captions say so), with
    # what a subset size sets in the presets (Utrera: 100 or 150 epochs, evaluated every 20 or 10)
    require_one_trial_per_seed(frame, ("dataset", "source", "subset_size"), "report demo", pooled=("blocks",))
    require_one_trial_per_seed(frame, ("dataset", "source"), "report demo",
                               pooled=("blocks", "subset_size", "epochs", "params.eval_epochs"))
    frame = add_source_labels(frame, db)
    accuracy = stats.summarize(frame, ["dataset", "source_label", "subset_size"], "test_acc")
    accuracy = nullable_ints(accuracy, ("subset_size",)).sort_values(
        ["dataset", "source_label", "subset_size"], na_position="last",
        key=lambda c: c.map(source_order) if c.name == "source_label" else c).reset_index(drop=True)
    robustness = None
    for metric in ("test_acc", "asr", "er"):
        part = stats.summarize(frame, ["dataset", "source_label"], metric)[["dataset", "source_label", "n", "mean",
                                                                           "ci95"]]
        part = part.rename(columns={c: f"{metric}_{c}" for c in ("n", "mean", "ci95")})
        robustness = part if robustness is None else robustness.merge(part, on=["dataset", "source_label"],
                                                                      how="outer")
    assert robustness is not None
    robustness = robustness.sort_values(["dataset", "source_label"],
                                        key=lambda c: c.map(source_order) if c.name == "source_label" else c)
    return accuracy, robustness.reset_index(drop=True), demo_sql(experiment)


def demo(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None) -> Report:
    accuracy, robustness, sql = demo_frames(db, experiment)
    sizes = sorted(accuracy["subset_size"].unique().tolist(), key=subset_sort_key)
    accuracy_display = accuracy.assign(subset_size=accuracy["subset_size"].map(subset_label))
    table1 = _wide(accuracy_display, ["dataset", "source_label"], "subset_size",
                   lambda r: pct(r["mean"], r["ci95"]), [subset_label(s) for s in sizes],
                   {"dataset": "target", "source_label": "source"})
    table1 = table1.rename(columns={subset_label(s): f"{subset_label(s)} images" for s in sizes})
    table1.attrs["keys"] = ["target", "source"]
    table2 = pd.DataFrame({
        "target": robustness["dataset"],
        "source": robustness["source_label"],
        "test acc (%)": [pct(m, c) for m, c in zip(robustness["test_acc_mean"], robustness["test_acc_ci95"],
                                                   strict=True)],
        "ASR (%)": [pct(m, c) for m, c in zip(robustness["asr_mean"], robustness["asr_ci95"], strict=True)],
        "ER, last epoch (pp)": [("" if pd.isna(m) else f"{100 * m:+.1f}") for m in robustness["er_mean"]],
    })
    table2.attrs["keys"] = ["target", "source"]
    data = accuracy.assign(table="accuracy")
    return Report("demo", f"rtgrid demo — {experiment}", data, [
        ("test accuracy (%) by source and training images: mean ± 95% CI over seeds and block settings", table1),
        ("by source: test accuracy, attack success rate of the penultimate-layer attack (ASR), effective "
         "robustness at the last epoch", table2),
    ], sql=sql)


def demo_report(db: Database | Any, experiment: str) -> Iterator[str]:
    """The demo's closing tables as printable lines, with the SQL that gives the first one."""
    with reading(db) as database:
        report = demo(database, experiment)
    (caption1, table1), (caption2, table2) = report.tables
    yield ""
    yield caption1
    yield _text(table1)
    yield ""
    yield "the same numbers from SQL (means only):"
    yield f'rtgrid query "{report.sql}"'.replace("\n", "\n  ")
    yield ""
    yield caption2
    yield _text(table2)


# --- registry and rendering ---------------------------------------------------------------------------

ReportFunction = Callable[[ReadOnlyDatabase, str, int | None], Report]
REPORTS: dict[str, tuple[ReportFunction, str]] = {
    "utrera-table7": (utrera_table7, "mean test accuracy by target x subset size and source (± 95% CI)"),
    "utrera-blocks": (utrera_blocks, "test accuracy by number of fine-tuned blocks per target x source"),
    "renofeation": (renofeation, "clean accuracy and ASR by method x dataset, with the average"),
    "er": (er_report, "per-epoch ER binned by ID accuracy, per architecture and init"),
    "demo": (demo, "the smoke grid's closing tables and the SQL behind the first"),
    "study": (study_report, "the embedded study's verdicts: each claim's paired effect, 95% CI, n, verdict"),
}


def build_report(name: str, experiment: str, db: Database = None, blocks: int | None = None,
                 where: Sequence[str] = ()) -> Report:
    """One report of one experiment; `where`: --where conditions on the trials' key columns (filters.py)."""
    if name not in REPORTS:
        raise UserError(unknown_name_message("report", name, list(REPORTS)))
    from orchestrator.results.filters import FilteredDatabase, describe, parse_where

    conditions = parse_where(where)
    with reading(db) as database:
        scoped = FilteredDatabase(database, conditions) if conditions else database
        report = REPORTS[name][0](scoped, experiment, blocks)
    if conditions:
        report.notes.append(f"trials where {describe(conditions)}")
    return report


def unknown_name_message(what: str, name: str, known: Sequence[str]) -> str:
    """`unknown report 'utrera-tabel7'; did you mean 'utrera-table7'? (known: …)`: one line."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(known)})"


def build_reports(name: str, experiments: Sequence[str], db: Database = None, blocks: int | None = None,
                  where: Sequence[str] = ()) -> Report:
    """The report of each experiment, side by side: each table joined on its row labels with one column per
    (experiment, value column); the data stacked with an `experiment` column."""
    if len(experiments) == 1:
        return build_report(name, experiments[0], db, blocks, where)
    if len(set(experiments)) != len(experiments):
        raise UserError("an --experiment is given twice")
    with reading(db) as database:
        reports = [build_report(name, e, database, blocks, where) for e in experiments]
    tables = []
    for index, (caption, _) in enumerate(reports[0].tables):
        parts = [r.tables[index][1] if index < len(r.tables) else pd.DataFrame() for r in reports]
        tables.append((caption, _side_by_side(parts, experiments)))
    data = pd.concat([r.data.assign(experiment=e) for r, e in zip(reports, experiments, strict=True)],
                     ignore_index=True)
    data = data[["experiment", *(c for c in data.columns if c != "experiment")]]
    notes = [f"{e}: {note}" for r, e in zip(reports, experiments, strict=True) for note in r.notes]
    return Report(name, f"{reports[0].title.split(' — ')[0]} — {' vs '.join(experiments)}", data, tables, notes)


def _side_by_side(tables: Sequence[pd.DataFrame], experiments: Sequence[str]) -> pd.DataFrame:
    keys = tables[0].attrs.get("keys")
    if not keys or any(t.attrs.get("keys") != keys for t in tables if not t.empty):
        stacked = pd.concat([t.assign(experiment=e) for t, e in zip(tables, experiments, strict=True)],
                            ignore_index=True).fillna("")
        return stacked[["experiment", *(c for c in stacked.columns if c != "experiment")]]
    merged: pd.DataFrame | None = None
    for table, experiment in zip(tables, experiments, strict=True):
        if table.empty:
            continue
        renamed = table.rename(columns={c: f"{c} [{experiment}]" for c in table.columns if c not in keys})
        merged = renamed if merged is None else merged.merge(renamed, on=keys, how="outer", sort=False)
    assert merged is not None
    merged = merged.fillna("")
    merged.attrs["keys"] = keys
    return merged


def _text(table: pd.DataFrame) -> str:
    rows = table.itertuples(index=False, name=None)
    rows = [tuple("" if v is None else v for v in r) for r in rows]
    numeric = [i > 0 and all(_looks_numeric(r[i]) for r in rows) for i in range(len(table.columns))]
    return text_table([str(c) for c in table.columns], rows, numeric)


def _looks_numeric(value: Any) -> bool:
    text = str(value).strip().rstrip("*").strip()
    return text == "" or text.replace("±", "").replace(" ", "").replace(".", "").replace("+", "").replace(
        "-", "").replace("(", "").replace(")", "").isdigit()


def _markdown(table: pd.DataFrame) -> str:
    def esc(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in table.itertuples(index=False, name=None)]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "→": r"$\to$", "−": "-", "–": "--"}


def _latex_escape(value: Any) -> str:
    """One pass, so that an escape's own braces are never escaped again."""
    import re

    return re.sub("|".join(re.escape(c) for c in _LATEX_SPECIAL), lambda m: _LATEX_SPECIAL[m.group(0)], str(value))


def latex_table(caption: str, table: pd.DataFrame) -> str:
    """A booktabs table (needs \\usepackage{booktabs}): the row-label columns left, values right-aligned."""
    keys = table.attrs.get("keys") or list(table.columns[:1])
    align = "".join("l" if c in keys else "r" for c in table.columns)
    lines = [r"\begin{table}[ht]", r"\centering", f"\\caption{{{_latex_escape(caption)}}}",
             f"\\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape("" if v is None else v) for v in row) + r" \\"
              for row in table.itertuples(index=False, name=None)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def report_json(report: Report) -> str:
    """The report as JSON: the shown tables (strings, as displayed) and the long-form data (fractions)."""
    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return [{str(k): _json_value(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]

    return json.dumps({
        "report": report.name, "title": report.title,
        "tables": [{"caption": caption, "columns": [str(c) for c in table.columns],
                    "rows": [[_json_value(v) for v in row] for row in table.astype(object).itertuples(index=False)]}
                   for caption, table in report.tables],
        "data": records(report.data), "notes": report.notes, "sql": report.sql,
    }, indent=2, default=str)


def render(report: Report, fmt: str = "table") -> str:
    """table: aligned text; markdown: pipe tables; latex: booktabs tables; csv: the long-form data
    (fractions); json: the tables as shown and the long-form data."""
    if fmt == "csv":
        buffer = io.StringIO()
        report.data.to_csv(buffer, index=False)
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        return report_json(report)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "latex":
        out = [f"% {_latex_escape(report.title)}"]
        out += [latex_table(caption, table) for caption, table in report.tables]
        out += [f"% note: {_latex_escape(note)}" for note in report.notes]
        return "\n".join(out)
    out = [f"# {report.title}" if fmt == "markdown" else report.title]
    for caption, table in report.tables:
        out += ["", f"**{caption}**" if fmt == "markdown" else caption, ""]
        out.append(_markdown(table) if fmt == "markdown" else _text(table))
    if report.sql:
        out += ["", "SQL:", "", f"```sql\n{report.sql}\n```" if fmt == "markdown" else report.sql]
    if report.notes:
        out += [""] + [f"note: {note}" for note in report.notes]
    return "\n".join(out)
