"""The embedded study's verdicts (`rtgrid report study`, the end of `rtgrid demo`): each paper's claim
as a paired effect with its 95% CI over seeds, read from the database, and a verdict the CI decides.

Nothing here knows a result: the claims say which arms to compare and in which direction; the numbers,
CIs and verdicts come from the experiment's rows. A claim whose CI does not clear its bound is
"not reproduced", whatever the mean says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.results import stats
from orchestrator.results.frames import (
    NATURAL,
    add_source_labels,
    completed_transfers_sql,
    experiment_trials_sql,
    require_experiment,
    require_one_trial_per_seed,
    require_rows,
    trial_frame,
)
from orchestrator.results.query import Database, ReadOnlyDatabase, reading

REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
# Chin et al.'s "at comparable accuracy": Renofeation may lose at most this much accuracy to fine-tuning
# (the lower end of the paired CI), a decision rule of the study, not a measured number.
COMPARABLE_ACCURACY = 0.05
MIN_ER_EPOCHS = 3  # a run with fewer per-epoch ER values has no ER trajectory (Andreassen arm)

TRIAL_COLUMNS = ("t.id AS trial_id, t.dataset, t.ood, t.source, t.method, t.init, t.blocks, t.subset_size, t.seed, "
                 "t.epochs, t.test_acc, t.ood_acc, t.asr, t.spec_json")
SOURCE_SQL_COLUMNS = "t.method, t.dataset, t.ood, t.seed, t.test_acc, t.robust_acc, t.ood_acc"
# Per-epoch ER of the experiment's transfers, leaving out the runs of the testbed their baseline was
# fitted on (fitted_from 'experiment:<name>'): the compared runs never sit in their own baseline.
EPOCH_ER_SQL = experiment_trials_sql(
    "t.id AS trial_id, t.dataset, t.ood, t.init, t.method, t.subset_size, t.seed, t.spec_json, m.epoch, "
    "m.test_acc, m.er",
    "AND " + completed_transfers_sql() + " AND m.er IS NOT NULL AND m.test_acc IS NOT NULL "
    "AND t.id NOT IN (SELECT et2.trial_id FROM experiment_trials et2 "
    "JOIN experiments e2 ON e2.id = et2.experiment_id "
    "JOIN er_baselines b ON b.fitted_from = 'experiment:' || e2.name WHERE b.id = m.er_baseline_id)",
).replace("FROM trials t ", "FROM trials t JOIN epoch_metrics m ON m.trial_id = t.id ", 1)


@dataclass(frozen=True)
class Verdict:
    paper: str
    claim: str
    cell: str
    n: int  # paired seeds (or runs)
    effect: float  # mean paired difference, a fraction
    ci_low: float
    ci_high: float
    bound: float  # the CI must clear this ...
    above: bool  # ... from above (ci_low > bound) or from below (ci_high < bound)

    @property
    def verdict(self) -> str:
        if self.n < 2 or np.isnan(self.ci_low):
            return f"{NOT_REPRODUCED} (n < 2)"
        cleared = self.ci_low > self.bound if self.above else self.ci_high < self.bound
        return REPRODUCED if cleared else NOT_REPRODUCED


def _verdict(paper: str, claim: str, cell: str, deltas: pd.Series, bound: float = 0.0, above: bool = True) -> Verdict:
    n, mean, half = stats.mean_ci(deltas)
    return Verdict(paper, claim, cell, n, mean, mean - half, mean + half, bound, above)


def study_trials(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """The experiment's completed transfers (one row per trial) with their source labels."""
    frame = trial_frame(db, experiment, TRIAL_COLUMNS, f"AND {completed_transfers_sql()}")
    require_rows(frame, "completed transfer trials", experiment)
    return add_source_labels(frame, db)


def _size_text(subset: Any) -> str:
    return "full training set" if subset is None or pd.isna(subset) else f"{int(subset)} images"


def _smallest(sizes: pd.Series) -> Any:
    known = sizes.dropna()
    return known.min() if not known.empty else None


def utrera_verdicts(trials: pd.DataFrame) -> list[Verdict]:
    """Utrera et al.: robust sources transfer better than the natural one at the smallest training set,
    per target (finetune from the source's weights; paired by seed, so both arms share the subset)."""
    out = []
    for dataset, group in utrera_trials(trials).groupby("dataset", sort=True):
        smallest = _smallest(group["subset_size"])
        if smallest is None:
            continue
        cell = group[group["subset_size"] == smallest]
        require_one_trial_per_seed(cell, ("dataset", "source_label", "blocks"), "report study")
        for label in sorted(set(cell["source_label"]) - {NATURAL}):
            for blocks, at_blocks in cell.groupby("blocks", sort=True):
                deltas = stats.paired_deltas(at_blocks, [], "source_label", label, NATURAL, "test_acc")["delta"]
                out.append(_verdict("Utrera", f"{label} source > natural source (test accuracy)",
                                    f"{dataset}, {_size_text(smallest)}, {int(blocks)} blocks", deltas))
    return out


def chin_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The Chin arm: every method's runs from the natural source (the attack's model) with an ASR, on the
    targets that have Renofeation runs."""
    natural = trials[(trials["source_label"] == NATURAL) & trials["asr"].notna()]
    return natural[natural["dataset"].isin(set(natural.loc[natural["method"] == "renofeation", "dataset"]))]


def utrera_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The Utrera arm: finetune from each source's weights on a training subset."""
    return trials[(trials["method"] == "finetune") & (trials["init"] == "pretrained") & trials["subset_size"].notna()]


def chin_verdicts(trials: pd.DataFrame) -> list[Verdict]:
    """Chin et al.: fine-tuning inherits the source's vulnerability (ASR above re-training from scratch);
    Renofeation removes most of it (ASR below fine-tuning) at comparable accuracy. Every method's runs use
    the natural source (the attack's model) on a target with Renofeation runs, paired by seed per budget."""
    out = []
    for (dataset, subset), cell in chin_trials(trials).groupby(
            ["dataset", "subset_size"], sort=True, dropna=False):
        require_one_trial_per_seed(cell, ("dataset", "subset_size", "method"), "report study")
        where = f"{dataset}, {_size_text(subset)}"

        def delta(treated: str, control: str, value: str, frame: pd.DataFrame = cell) -> pd.Series:
            return stats.paired_deltas(frame, [], "method", treated, control, value)["delta"]

        out.append(_verdict("Chin", "finetune ASR > retrain ASR", where, delta("finetune", "retrain", "asr")))
        out.append(_verdict("Chin", "renofeation ASR < finetune ASR", where,
                            delta("renofeation", "finetune", "asr"), above=False))
        out.append(_verdict("Chin", f"renofeation accuracy >= finetune - {100 * COMPARABLE_ACCURACY:.0f} pp", where,
                            delta("renofeation", "finetune", "test_acc"), bound=-COMPARABLE_ACCURACY))
    return out


def er_epochs(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """Per-epoch (test_acc, er) of the runs with an ER trajectory: >= MIN_ER_EPOCHS epochs with ER, outside
    their baseline's testbed."""
    epochs = nullable_frame(db.frame(EPOCH_ER_SQL, {"experiment": experiment}))
    counts = epochs.groupby("trial_id")["epoch"].transform("count")
    return epochs[counts >= MIN_ER_EPOCHS].sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def er_runs(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """Per run of er_epochs: dataset, ood, subset_size, init, seed, epochs, max ER, mean ER over the first
    half of its epochs, ER at the last."""
    rows = []
    for trial_id, run in er_epochs(db, experiment).groupby("trial_id", sort=True):
        first = run.iloc[0]
        half = run[run["epoch"] <= run["epoch"].max() / 2]
        rows.append({"trial_id": trial_id, "dataset": first["dataset"], "ood": first["ood"],
                     "subset_size": first["subset_size"], "init": first["init"], "seed": first["seed"],
                     "spec_json": first["spec_json"], "epochs": len(run), "max_er": run["er"].max(),
                     "early_er": half["er"].mean(), "last_er": run["er"].iloc[-1]})
    return pd.DataFrame(rows, columns=["trial_id", "dataset", "ood", "subset_size", "init", "seed", "spec_json",
                                       "epochs", "max_er", "early_er", "last_er"])


def nullable_frame(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("subset_size", "seed", "epoch"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def andreassen_verdicts(runs: pd.DataFrame) -> list[Verdict]:
    """Andreassen et al.: pre-trained models show effective robustness during fine-tuning that random-init
    models do not (max per-epoch ER, paired by seed), and it falls as fine-tuning goes on (the mean ER of
    the first half of training minus the ER at the last epoch, per pre-trained run)."""
    out = []
    for (dataset, ood, subset), cell in runs.groupby(["dataset", "ood", "subset_size"], sort=True, dropna=False):
        if not {"pretrained", "random"} <= set(cell["init"]):
            continue
        require_one_trial_per_seed(cell, ("dataset", "ood", "subset_size", "init"), "report study")
        where = f"{dataset} -> {ood}, {_size_text(subset)}"
        deltas = stats.paired_deltas(cell, [], "init", "pretrained", "random", "max_er")["delta"]
        out.append(_verdict("Andreassen", "pre-trained max ER > random-init max ER", where, deltas))
        pretrained = cell[cell["init"] == "pretrained"]
        out.append(_verdict("Andreassen", "pre-trained ER falls by the end (early - last ER)", where,
                            pretrained["early_er"] - pretrained["last_er"]))
    return out


def verdict_frame(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """Every claim's verdict for the experiment: paper, claim, cell, n, effect, ci_low, ci_high, verdict
    (effects as fractions)."""
    trials = study_trials(db, experiment)
    found = [*utrera_verdicts(trials), *chin_verdicts(trials), *andreassen_verdicts(er_runs(db, experiment))]
    return pd.DataFrame([{"paper": v.paper, "claim": v.claim, "cell": v.cell, "n": v.n, "effect": v.effect,
                          "ci_low": v.ci_low, "ci_high": v.ci_high, "verdict": v.verdict} for v in found],
                        columns=["paper", "claim", "cell", "n", "effect", "ci_low", "ci_high", "verdict"])


def source_frame(db: ReadOnlyDatabase, experiment: str) -> pd.DataFrame:
    """The study's sources: method, test accuracy, robust accuracy and the shape share (ood_acc on the
    shape/pattern-conflict set: images carrying another class's pattern, labelled by their shape)."""
    require_experiment(db, experiment)
    return db.frame(experiment_trials_sql(SOURCE_SQL_COLUMNS, "AND t.kind = 'source' ORDER BY t.id"),
                    {"experiment": experiment})


def _pp(value: float) -> str:
    return "" if pd.isna(value) else f"{100 * value:+.1f}"


def verdict_table(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "paper": frame["paper"], "claim": frame["claim"], "cell": frame["cell"],
        "effect (pp)": [_pp(v) for v in frame["effect"]],
        "95% CI (pp)": [("" if pd.isna(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]")
                        for lo, hi in zip(frame["ci_low"], frame["ci_high"], strict=True)],
        "n": frame["n"].astype(int), "verdict": frame["verdict"],
    })


def source_table(frame: pd.DataFrame) -> pd.DataFrame:
    def pct(value: Any) -> str:
        return "" if value is None or pd.isna(value) else f"{100 * float(value):.1f}"

    return pd.DataFrame({
        "source": frame["method"], "dataset": frame["dataset"],
        "test acc (%)": [pct(v) for v in frame["test_acc"]],
        "robust acc (%)": [pct(v) for v in frame["robust_acc"]],
        "follows shape on conflicts (%)": [pct(v) for v in frame["ood_acc"]],
    })


def study_report(db: ReadOnlyDatabase, experiment: str, blocks: int | None = None) -> Any:
    from orchestrator.results.reports import Report

    verdicts = verdict_frame(db, experiment)
    sources = source_frame(db, experiment)
    return Report("study", f"the embedded study's verdicts — {experiment}", verdicts, [
        ("the sources (shape share: accuracy on images whose pattern names another class; 10% = chance)",
         source_table(sources)),
        ("each claim: mean paired effect, its 95% CI over seeds (t), n pairs; reproduced when the CI clears "
         "the claim's bound", verdict_table(verdicts)),
    ], notes=[f"'comparable accuracy' = the CI of Renofeation - finetune accuracy lies above "
              f"-{100 * COMPARABLE_ACCURACY:.0f} pp",
              "ER: per-epoch effective robustness against a baseline fitted on an independent random-init "
              "testbed (its runs are left out of the comparison)"])


def study_lines(db: Database | Any, experiment: str) -> Iterator[str]:
    """The closing tables of `rtgrid demo`: the same report as `rtgrid report study`."""
    from orchestrator.results.reports import render

    with reading(db) as database:
        report = study_report(database, experiment)
    yield ""
    yield render(report)
    yield ""
    yield f"the same table: rtgrid report study --experiment {experiment}"

