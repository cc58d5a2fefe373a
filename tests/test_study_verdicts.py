"""The study's plan and its verdict logic, without Ray: the reduced study planned into a real SQLite file
by the real planner, outcomes written on the real schema with known paired effects, the ER baseline
fitted by the real `er fit` path on the testbed experiment; the verdicts must follow those rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import bindparam, update

from db.models import Base
from db.repository import Repository
from db.session import open_database
from orchestrator.console.demo import TESTBED_SUFFIX
from orchestrator.plan.grids import (
    STUDY_OOD,
    STUDY_SHAPE_TARGET,
    STUDY_TESTBED_SEED_OFFSET,
    study,
    study_experiment,
    study_testbed,
)
from orchestrator.plan.planner import record_plan
from orchestrator.plan.spec import TrialSpec
from orchestrator.results.er import fit_from_experiment
from orchestrator.results.query import ReadOnlyDatabase
from orchestrator.results.study import NOT_REPRODUCED, REPRODUCED, verdict_frame

EXPERIMENT = study_experiment(0, "digits", "reduced")


def test_seed_bases_are_new_experiments_and_the_testbed_is_independent() -> None:
    base, other = study(0, "digits", "reduced"), study(7, "digits", "reduced")
    assert not {s.spec_hash for s in base.specs} & {s.spec_hash for s in other.specs}
    assert study_experiment(0) != study_experiment(7) != study_experiment(7, "mnist")
    testbed = study_testbed(0, "digits", "reduced")
    assert {s.spec_hash for s in testbed.specs} <= {s.spec_hash for s in base.specs}
    compared = {s.seed for s in base.transfers if s not in testbed.specs}
    assert not compared & {s.seed for s in testbed.transfers}
    assert all(s.method == "retrain" and s.seed >= STUDY_TESTBED_SEED_OFFSET for s in testbed.transfers)
    mnist = study(0, "mnist", "reduced")
    assert {s.dataset for s in mnist.transfers} == {"mnist", STUDY_SHAPE_TARGET}
    # Chin's arm: every method, ASR over the whole digit test set (attack_images 0)
    digits = [s for s in base.transfers if s.dataset == "digits"]
    assert {s.method for s in digits} == {"linear", "finetune", "delta", "retrain", "renofeation"}
    assert all(s.param("attack_images") == 0 and s.param("attack_steps") > 0 for s in digits)
    with pytest.raises(Exception, match="study target"):
        study(0, "cifar10")


def _source_method(spec: TrialSpec, methods: dict[str, str]) -> str:
    return methods.get((spec.source or "").removeprefix("spec:"), "")


def _fill(url: str, utrera_gap: dict[str, float]) -> None:
    """Plan the reduced study and its testbed; write completed outcomes with known effects: robust - natural
    accuracy = utrera_gap[target] (+ a seed wobble), finetune ASR far above retrain and renofeation at a
    similar accuracy, pre-trained ER high mid-training and falling, random-init ER near 0."""
    engine = open_database(url, create=True)
    repo = Repository(engine)
    grid = study(0, "digits", "reduced")
    record_plan(repo, grid, EXPERIMENT)
    record_plan(repo, study_testbed(0, "digits", "reduced"), EXPERIMENT + TESTBED_SUFFIX)
    methods = {s.spec_hash: s.method for s in grid.sources}
    wobble = {0: 0.01, 1: -0.01, 2: 0.005}
    finals: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for spec in grid.specs:
        seed = (spec.seed or 0) % STUDY_TESTBED_SEED_OFFSET
        if spec.kind == "source":
            finals.append({"h": spec.spec_hash, "test_acc": 0.9, "ood_acc": 0.5, "asr": None, "robust_acc": 0.4})
            continue
        source = _source_method(spec, methods)
        if spec.method == "finetune" and spec.subset_size is not None:
            acc = 0.5 + (utrera_gap[spec.dataset] if source != "natural" else 0.0) + wobble.get(seed, 0.0)
            asr = 0.7 + 0.01 * seed
        else:
            acc = {"linear": 0.4, "delta": 0.55, "retrain": 0.45, "renofeation": 0.5,
                   "finetune": 0.6}[spec.method] + wobble.get(seed, 0.0)
            asr = {"linear": 0.9, "delta": 0.75, "retrain": 0.05, "renofeation": 0.1,
                   "finetune": 0.7}[spec.method] + 0.01 * seed
        if spec.dataset != "digits":  # the grid attacks the digit target only
            asr = None
        curve = []
        # the testbed: OOD = ID - 0.2 exactly, at varied accuracy (its subset sets it)
        testbed = (spec.seed or 0) >= STUDY_TESTBED_SEED_OFFSET
        last = spec.epochs
        for epoch in range(1, last + 1):
            if testbed:
                id_acc = 0.3 + 0.5 * (spec.subset_size or 1000) / 1000 * epoch / last
                ood = id_acc - 0.2
            else:
                id_acc = acc * (0.5 + 0.5 * epoch / last)
                bump = 0.15 * np.sin(np.pi * epoch / last) if spec.method == "finetune" else 0.0
                ood = id_acc - 0.2 + bump + 0.002 * seed
            curve.append((epoch, float(id_acc), float(ood)))
        evaluated = spec.param("eval_epochs") or list(range(1, last + 1))
        for epoch, id_acc, ood in curve:
            if epoch in evaluated:
                epochs.append({"h": spec.spec_hash, "epoch": epoch, "test_acc": id_acc, "ood_acc": ood,
                               "train_loss": 1.0, "train_acc": id_acc, "lr": 0.1, "seconds": 1.0})
        finals.append({"h": spec.spec_hash, "test_acc": curve[-1][1], "ood_acc": curve[-1][2], "asr": asr,
                       "robust_acc": None})
    trials = Base.metadata.tables["trials"]
    epoch_table = Base.metadata.tables["epoch_metrics"]
    with engine.begin() as connection:
        ids = dict(connection.execute(trials.select().with_only_columns(trials.c.spec_hash, trials.c.id)).all())
        connection.execute(
            update(trials).where(trials.c.spec_hash == bindparam("h")).values(
                status="completed", attempts=1, duration_s=1.0,
                **{name: bindparam(f"v_{name}") for name in ("test_acc", "ood_acc", "asr", "robust_acc")}),
            [{"h": row["h"], **{f"v_{k}": v for k, v in row.items() if k != "h"}} for row in finals])
        connection.execute(epoch_table.insert(), [
            {"trial_id": ids[row["h"]], **{k: v for k, v in row.items() if k != "h"}} for row in epochs])
    fits = fit_from_experiment(repo, EXPERIMENT, STUDY_SHAPE_TARGET, STUDY_OOD,
                               testbed_experiment=EXPERIMENT + TESTBED_SUFFIX)
    assert len(fits) == 1 and not any("circular" in w for w in fits[0].warnings)
    engine.dispose()


def _verdicts(url: str) -> pd.DataFrame:
    with ReadOnlyDatabase(url) as database:
        return verdict_frame(database, EXPERIMENT)


def _row(frame: pd.DataFrame, claim: str, cell_start: str) -> pd.Series:
    found = frame[frame["claim"].str.startswith(claim) & frame["cell"].str.startswith(cell_start)]
    assert len(found) == 1, frame[["claim", "cell"]]
    return found.iloc[0]


@pytest.mark.parametrize("gap", [0.1, -0.1])
def test_verdicts_follow_the_stored_numbers(tmp_path: Path, gap: float) -> None:
    url = f"sqlite:///{tmp_path / 'study.sqlite'}"
    _fill(url, {"digits": gap, STUDY_SHAPE_TARGET: 0.0})
    frame = _verdicts(url)
    assert set(frame["paper"]) == {"Utrera", "Chin", "Andreassen"}
    # Utrera: both robust sources, both targets, at 100 images; the shape target has no effect
    for label in ("pgd-linf", "pgd-l2"):
        digits = _row(frame, f"{label} source > natural", "digits, 100 images")
        assert digits["n"] == 3 and digits["effect"] == pytest.approx(gap)
        assert digits["verdict"] == (REPRODUCED if gap > 0 else NOT_REPRODUCED)
        flat = _row(frame, f"{label} source > natural", f"{STUDY_SHAPE_TARGET}, 100 images")
        assert flat["effect"] == pytest.approx(0.0, abs=1e-9) and flat["verdict"] == NOT_REPRODUCED
    # Chin, at both budgets
    for budget in ("digits, 100 images", "digits, 400 images"):
        assert _row(frame, "finetune ASR > retrain ASR", budget)["effect"] == pytest.approx(0.65)
        assert _row(frame, "finetune ASR > retrain ASR", budget)["verdict"] == REPRODUCED
        assert _row(frame, "renofeation ASR < finetune ASR", budget)["verdict"] == REPRODUCED
        accuracy = _row(frame, "renofeation accuracy", budget)
        # renofeation 0.5 vs the finetune cell's natural runs at 0.5: no loss, so comparable
        assert accuracy["effect"] == pytest.approx(0.0, abs=1e-9) and accuracy["verdict"] == REPRODUCED
    # Andreassen: the compared runs only (3 + 3, never the testbed's), pre-trained ER bump then fall
    max_er = _row(frame, "pre-trained max ER > random-init max ER", STUDY_SHAPE_TARGET)
    assert max_er["n"] == 3 and max_er["effect"] > 0.05 and max_er["verdict"] == REPRODUCED
    falls = _row(frame, "pre-trained ER falls", STUDY_SHAPE_TARGET)
    assert falls["n"] == 3 and falls["verdict"] == REPRODUCED


def test_a_claim_without_pairs_is_not_reproduced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.sqlite'}"
    _fill(url, {"digits": 0.1, STUDY_SHAPE_TARGET: 0.1})
    engine = open_database(url, create=False)
    with engine.begin() as connection:  # keep one natural run in the digits cell at 100 images
        rows = connection.exec_driver_sql(
            "SELECT t.id, t.spec_json FROM trials t JOIN trials s ON s.spec_hash = substr(t.source, 6) "
            "WHERE t.dataset = 'digits' AND t.method = 'finetune' AND t.subset_size = 100 "
            "AND s.method = 'natural'").all()
        for trial_id, spec_json in rows:
            if json.loads(spec_json)["seed"] != 0:
                connection.exec_driver_sql("UPDATE trials SET status = 'failed' WHERE id = ?", (trial_id,))
    engine.dispose()
    row = _row(_verdicts(url), "pgd-linf source > natural", "digits, 100 images")
    assert row["n"] == 1 and row["verdict"].startswith(NOT_REPRODUCED)


def test_study_report_and_plots_refuse_two_trials_of_one_seed_in_a_cell(tmp_path: Path) -> None:
    """A Renofeation and an Andreassen random-init run planned twice for one seed (another lr): the verdicts
    and the Chin / Andreassen plots refuse to pool them, in one line naming the cell."""
    from orchestrator.errors import UserError
    from orchestrator.results.plots import make_plot
    from orchestrator.results.study import study_lines

    url = f"sqlite:///{tmp_path / 'study.sqlite'}"
    _fill(url, {"digits": 0.1, STUDY_SHAPE_TARGET: 0.0})
    grid = study(0, "digits", "reduced")
    twins = []
    for spec in grid.transfers:
        chin = spec.method == "renofeation" and spec.seed == 0 and spec.subset_size == 100
        andreassen = spec.method == "retrain" and spec.seed == 0 and spec.subset_size is None
        if chin or andreassen:
            fields = {**spec.to_dict(), "params": {**spec.params, "lr": 0.02}}
            twins.append(TrialSpec.from_dict(fields))
    assert len(twins) == 2
    engine = open_database(url, create=False)
    repo = Repository(engine)
    record_plan(repo, grid.__class__(grid.name, grid.description, [*grid.specs, *twins]), EXPERIMENT)
    trials, epoch_table = Base.metadata.tables["trials"], Base.metadata.tables["epoch_metrics"]
    with engine.begin() as connection:
        for twin in twins:
            connection.execute(update(trials).where(trials.c.spec_hash == twin.spec_hash).values(
                status="completed", test_acc=0.5, ood_acc=0.3, asr=0.1 if twin.dataset == "digits" else None))
        ids = dict(connection.execute(trials.select().with_only_columns(trials.c.spec_hash, trials.c.id)).all())
        twin_er = next(t for t in twins if t.dataset == STUDY_SHAPE_TARGET)
        connection.execute(epoch_table.insert(), [{"trial_id": ids[twin_er.spec_hash], "epoch": e, "test_acc": 0.5,
                                                   "ood_acc": 0.3, "er": 0.01} for e in range(1, 6)])
    engine.dispose()
    with pytest.raises(UserError) as info:
        list(study_lines(url, EXPERIMENT))
    assert str(info.value).startswith("report study: cell ") and "method=renofeation" in str(info.value)
    assert "params.lr" in str(info.value)
    for name, part in (("study-asr", "method=renofeation"), ("study-er", "init=random")):
        with pytest.raises(UserError) as info:
            make_plot(name, EXPERIMENT, url)
        assert str(info.value).startswith(f"plot {name}: cell ") and part in str(info.value), str(info.value)


def test_the_study_plots_draw_the_three_arms(tmp_path: Path) -> None:
    import matplotlib.image
    from cli_helpers import run_cli

    from orchestrator.console.demo import STUDY_PLOTS
    from orchestrator.results.plots import make_plot

    url = f"sqlite:///{tmp_path / 'study.sqlite'}"
    _fill(url, {"digits": 0.1, STUDY_SHAPE_TARGET: 0.05})
    expected = {  # first axes: (title contains, x label, y label, legend entries)
        "study-accuracy": ("digits: fine-tuning the last 3 blocks", "training images",
                           "test accuracy (%), mean ± 95% CI", 3),
        "study-asr": ("digits, 100 training images", "clean test accuracy (%)", "attack success rate, ASR (%)", 5),
        "study-er": ("Andreassen et al.", "ID test accuracy (%)", "effective robustness (pp)", 2),
    }
    assert set(expected) == set(STUDY_PLOTS)
    for name, (title, xlabel, ylabel, entries) in expected.items():
        target = tmp_path / f"{name}.png"
        run_cli("plot", name, "--experiment", EXPERIMENT, "-o", str(target), "--db", url)
        image = matplotlib.image.imread(target)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01
        ax = make_plot(name, EXPERIMENT, url).axes[0]
        assert title in ax.get_title() and ax.get_xlabel() == xlabel and ax.get_ylabel() == ylabel, name
        assert len(ax.get_legend().get_texts()) == entries, name
