"""Reports against independent pandas + scipy computations from the raw rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from cli_helpers import error_line, run_cli
from results_data import (
    RANDOM_INIT,
    VARIANT_OF,
    assert_frames_agree,
    expected_label,
    independent_demo_frames,
    raw_frame,
    raw_trials,
    t_ci,
)

from db.repository import Repository
from db.session import open_database
from orchestrator.results import stats
from orchestrator.results.frames import source_label
from orchestrator.results.plots import PLOTS
from orchestrator.results.query import ReadOnlyDatabase
from orchestrator.results.reports import (
    REPORTS,
    blocks_frame,
    build_report,
    demo_frames,
    demo_report,
    er_frame,
    render,
    renofeation_frame,
    table7_frame,
)


def _completed_transfers(url: str, experiment: str) -> pd.DataFrame:
    trials = raw_trials(url, experiment)
    trials = trials[(trials["kind"] == "transfer") & (trials["status"] == "completed")].copy()
    trials["label"] = [expected_label(s, url) for s in trials["source"]]
    return trials


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _size_key(value: object) -> float:
    return math.inf if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]


def test_table7_matches_pandas(results_url: str) -> None:
    trials = _completed_transfers(results_url, "utrera-mini")
    trials = trials[trials["blocks"] == 3]
    with ReadOnlyDatabase(results_url) as database:
        frame = table7_frame(database, "utrera-mini", blocks=3)
    assert len(frame) == trials.groupby(["dataset", trials["subset_size"].fillna(-1), "label"]).ngroups
    for row in frame.itertuples(index=False):
        size_match = trials["subset_size"].isna() if pd.isna(row.subset_size) else trials["subset_size"] == \
            row.subset_size
        cell = trials[(trials["dataset"] == row.dataset) & size_match & (trials["label"] == row.source_label)]
        n, mean, ci = t_ci(cell["test_acc"])
        assert row.n == n and _close(row.mean, mean) and _close(row.ci95, ci), row
        row_cells = trials[(trials["dataset"] == row.dataset) & size_match]
        best = row_cells.groupby("label")["test_acc"].mean().idxmax()
        assert bool(row.best) == (row.source_label == best)
    # rows: subset sizes numerically with full last; columns: natural first
    for _, group in frame.groupby("dataset"):
        sizes = list(dict.fromkeys(group["subset_size"].tolist()))
        assert sizes == sorted(sizes, key=_size_key) and pd.isna(sizes[-1])
    text = render(build_report("utrera-table7", "utrera-mini", results_url), "table")
    header = next(line for line in text.splitlines() if line.startswith("target"))
    assert header.split()[2:] == ["natural", "l2-3", "linf-4"]
    assert text.count("*") >= 6  # one best source per (target, subset size) row
    full_rows = [line for line in text.splitlines() if line.split()[1:2] == ["full"]]
    assert len(full_rows) == 2


def test_blocks_report_matches_pandas(results_url: str) -> None:
    trials = _completed_transfers(results_url, "utrera-mini").dropna(subset=["blocks"])
    with ReadOnlyDatabase(results_url) as database:
        frame = blocks_frame(database, "utrera-mini")
    assert set(frame["blocks"]) == {0, 3}
    for row in frame.itertuples(index=False):
        size_match = trials["subset_size"].isna() if pd.isna(row.subset_size) else trials["subset_size"] == \
            row.subset_size
        cell = trials[(trials["dataset"] == row.dataset) & size_match & (trials["label"] == row.source_label)
                      & (trials["blocks"] == row.blocks)]
        n, mean, ci = t_ci(cell["test_acc"])
        assert row.n == n and _close(row.mean, mean) and _close(row.ci95, ci)


def test_renofeation_matches_pandas(results_url: str) -> None:
    trials = _completed_transfers(results_url, "reno-mini")
    trials["variant"] = trials["spec_hash"].map(VARIANT_OF)
    with ReadOnlyDatabase(results_url) as database:
        frame = renofeation_frame(database, "reno-mini")
    assert set(frame["method"]) == set(VARIANT_OF.values())
    for metric, column in (("clean_acc", "test_acc"), ("asr", "asr")):
        part = frame[frame["metric"] == metric]
        for row in part[part["dataset"] != "avg"].itertuples(index=False):
            cell = trials[(trials["arch"] == row.arch) & (trials["variant"] == row.method)
                          & (trials["dataset"] == row.dataset)]
            n, mean, ci = t_ci(cell[column])
            assert row.n == n and _close(row.mean, mean) and _close(row.ci95, ci)
        for row in part[part["dataset"] == "avg"].itertuples(index=False):
            cell = trials[(trials["arch"] == row.arch) & (trials["variant"] == row.method)]
            assert _close(row.mean, cell.groupby("dataset")[column].mean().mean())
    text = render(build_report("renofeation", "reno-mini", results_url), "table")
    assert "attack success rate" in text and "avg" in text
    methods_in_order = [line.split()[1] for line in text.splitlines() if line.startswith("resnet18")]
    assert methods_in_order[:3] == ["linear", "finetune", "delta"]


@pytest.mark.parametrize("experiment", ["utrera-mini", "smoke-mini"])
def test_er_report_matches_pandas(results_url: str, experiment: str) -> None:
    trials = _completed_transfers(results_url, experiment)
    epochs = raw_frame(results_url, "SELECT trial_id, epoch, test_acc, er FROM epoch_metrics")
    joined = epochs.merge(trials, left_on="trial_id", right_on="id", suffixes=("", "_final"))
    joined = joined.dropna(subset=["er", "test_acc"])
    # init as issue 11 defines it: the ER testbed is random; renofeation / delta-r (a teacher) are distilled
    random = (joined["method"] == "retrain") | (joined["source"] == "scratch")
    distilled = joined["method"].isin(RANDOM_INIT) & ~random
    joined["init"] = np.select([random, distilled], ["random", "distilled"], "pretrained")
    joined["bin"] = np.minimum(np.floor(joined["test_acc"] * 100 + 1e-9), 99).astype(int)
    expected = joined.groupby(["dataset", "ood", "arch", "init", "bin"])["er"].agg(["mean", "count"]).reset_index()
    with ReadOnlyDatabase(results_url) as database:
        frame = er_frame(database, experiment)
    assert len(frame) == len(expected)
    frame["bin"] = np.round(frame["id_low"] * 100).astype(int)
    merged = frame.merge(expected, on=["dataset", "ood", "arch", "init", "bin"])
    assert len(merged) == len(expected)
    assert np.allclose(merged["mean_er"], merged["mean"]) and (merged["checkpoints"] == merged["count"]).all()
    assert set(frame["init"]) == {"pretrained", "random"}


def test_demo_tables_and_their_sql_agree(results_url: str) -> None:
    trials = _completed_transfers(results_url, "smoke-mini")
    trials = trials[~(trials["method"].isin(RANDOM_INIT) | (trials["source"] == "scratch"))]  # the testbed
    with ReadOnlyDatabase(results_url) as database:
        accuracy, robustness, sql = demo_frames(database, "smoke-mini")
        from_sql = pd.DataFrame.from_records(database.execute_user(sql).rows,
                                             columns=database.execute_user(sql).columns)
    assert set(accuracy["source_label"]) == {"natural", "pgd-l2", "pgd-linf"}
    for row in accuracy.itertuples(index=False):
        cell = trials[(trials["dataset"] == row.dataset) & (trials["label"] == row.source_label)
                      & (trials["subset_size"] == row.subset_size)]
        n, mean, ci = t_ci(cell["test_acc"])
        assert row.n == n and _close(row.mean, mean) and _close(row.ci95, ci)
        match = from_sql[(from_sql["target"] == row.dataset) & (from_sql["source"] == row.source_label)
                         & (from_sql["subset_size"] == row.subset_size)]
        assert float(match["test_acc_pct"].iloc[0]) == pytest.approx(round(100 * mean, 1), abs=0.051)
        assert int(match["runs"].iloc[0]) == n
    for row in robustness.itertuples(index=False):
        cell = trials[(trials["dataset"] == row.dataset) & (trials["label"] == row.source_label)]
        assert _close(row.asr_mean, t_ci(cell["asr"])[1]) and _close(row.er_mean, t_ci(cell["er"])[1])
    assert len(from_sql) == len(accuracy)  # the SQL leaves the random-init testbed out too
    independent = independent_demo_frames(results_url, "smoke-mini")
    assert_frames_agree(accuracy, independent["accuracy"], ["dataset", "source_label", "subset_size"])
    assert_frames_agree(robustness, independent["robustness"], ["dataset", "source_label"])
    repo = Repository(open_database(results_url, create=False))  # what orchestrator.console.demo passes
    lines = list(demo_report(repo, "smoke-mini"))
    repo.close()
    text = "\n".join(lines)
    assert "rtgrid query" in text and "FROM results" in text and "pgd-linf" in text


def test_report_command_formats_and_errors(results_sqlite: str) -> None:
    cases = {"utrera-table7": "utrera-mini", "utrera-blocks": "utrera-mini", "renofeation": "reno-mini",
             "er": "utrera-mini", "demo": "smoke-mini"}
    for name, experiment in cases.items():
        for fmt in ("table", "markdown", "csv"):
            result = run_cli("report", name, "--experiment", experiment, "--format", fmt,
                             "--db", results_sqlite)  # exit 0
            if fmt == "csv":
                assert len(pd.read_csv(io.StringIO(result.stdout))) > 0
            if fmt == "markdown":
                assert "|---|" in result.stdout
    blocks0 = run_cli("report", "utrera-table7", "--experiment", "utrera-mini", "--blocks", "0",
                      "--db", results_sqlite, expect=None)
    assert "0 fine-tuned blocks" in blocks0.stdout
    for args in (["utrera-table7", "--experiment", "nope"], ["utrera-table7", "--experiment", "utrera-mini",
                                                            "--blocks", "7"], ["er", "--experiment", "reno-mini"]):
        error_line(run_cli("report", *args, "--db", results_sqlite, expect=2))  # one "rtgrid: error:" line


def test_report_and_plot_names_come_from_the_registries_with_a_did_you_mean() -> None:
    from cli import _plot_names, _report_names

    assert _report_names() == list(REPORTS) and _plot_names() == list(PLOTS)
    line = error_line(run_cli("report", "utrera-tabel7", "-e", "x", expect=2))  # one line, not Click's usage
    assert "unknown report 'utrera-tabel7'; did you mean 'utrera-table7'?" in line
    line = error_line(run_cli("plot", "learning-curv", "-e", "x", "-o", "x.png", expect=2))
    assert "unknown plot 'learning-curv'; did you mean 'learning-curve'?" in line


def test_stats_ci_and_pairing() -> None:
    from scipy import stats as scipy_stats

    values = [0.5, 0.6, 0.7, 0.65]
    n, mean, ci = stats.mean_ci(values)
    sd = float(np.std(values, ddof=1))
    assert n == 4 and mean == pytest.approx(0.6125)
    assert ci == pytest.approx(scipy_stats.t.ppf(0.975, 3) * sd / 2)
    assert math.isnan(stats.mean_ci([0.4])[2])
    sizes = np.array([2, 3, 5, 10, 20, 150])
    assert np.allclose(stats.t_half_width(sizes, 1.0) * np.sqrt(sizes), scipy_stats.t.ppf(0.975, sizes - 1))
    frame = pd.DataFrame({"cell": ["a"] * 6, "seed": [2, 1, 0, 0, 1, 2], "arm": ["r", "r", "r", "n", "n", "n"],
                          "acc": [0.9, 0.8, 0.7, 0.6, 0.75, 0.8]})
    paired = stats.summarize_paired(frame, ["cell"], "arm", "r", "n", "acc")
    deltas = [0.7 - 0.6, 0.8 - 0.75, 0.9 - 0.8]
    assert paired["n"].iloc[0] == 3 and paired["mean"].iloc[0] == pytest.approx(np.mean(deltas))
    assert paired["ci95"].iloc[0] == pytest.approx(stats.mean_ci(deltas)[2])
    moments = stats.from_moments(pd.DataFrame({"n": [4], "total": [sum(values)],
                                               "total_sq": [sum(v * v for v in values)]}))
    assert moments["ci95"].iloc[0] == pytest.approx(ci)


def test_source_labels() -> None:
    assert source_label("torchvision:resnet50") == "natural"
    assert source_label("robustness:imagenet_l2_3_0") == "l2-3"
    assert source_label("robustness:imagenet_linf_8") == "linf-8"
    assert source_label("spec:" + "a" * 64, {"a" * 64: "pgd-l2"}) == "pgd-l2"
    assert source_label("spec:" + "b" * 64, {}) == "spec:" + "b" * 12
    assert source_label("scratch") == "scratch"
    assert source_label("file:/x/y/model.pt") == "file:model.pt"
    assert source_label(None) == "-"


def test_table7_is_one_query_not_per_trial(results_sqlite: str) -> None:
    """Guard for speed without timing: the report issues a fixed number of statements."""
    with ReadOnlyDatabase(results_sqlite) as database:
        calls: list[str] = []
        original = database.rows
        database.rows = lambda sql, params=None: calls.append(sql) or original(sql, params)  # type: ignore
        table7_frame(database, "utrera-mini")
    assert len(calls) <= 3, calls
    assert json.dumps(calls).count("GROUP BY") == 1


def test_result_modules_import_neither_torch_nor_matplotlib() -> None:
    code = ("import sys, orchestrator.results.query, orchestrator.results.frames, orchestrator.results.export, "
            "orchestrator.results.reports, orchestrator.results.plots, orchestrator.results.stats; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a reported cell must hold one trial per seed -------------------------------------------------------

DUP_BASE = dict(kind="transfer", arch="resnet50", dataset="cifar10", ood="cifar10.1", method="finetune", blocks=3,
                subset_size=100, epochs=2)


def _dup_specs() -> list:
    from orchestrator.plan.spec import TrialSpec

    specs = [TrialSpec(**DUP_BASE, source=source, seed=seed)
             for seed in (0, 1) for source in ("torchvision:resnet50", "robustness:imagenet_l2_3_0")]
    specs.append(TrialSpec(**DUP_BASE, source="torchvision:resnet50", seed=0, params={"lr": 0.01}))  # other lr
    specs.append(TrialSpec(**DUP_BASE, source="torchvision:resnet50", seed=1, kernel_version="0"))  # older kernel
    return specs


@pytest.fixture()
def dup_url(db_url: str) -> str:
    """Experiment `dup`: natural and l2-3 sources, seeds 0 and 1, plus two trials that share a cell and a
    seed with another one: (cifar10, 100, natural, seed 0) with another lr, (…, seed 1) with an older kernel."""
    from sqlalchemy import bindparam, update

    from db.models import Base
    from orchestrator.plan.grids import Grid
    from orchestrator.plan.planner import record_plan

    engine = open_database(db_url, create=True)
    specs = _dup_specs()
    record_plan(Repository(engine), Grid("dup", "dup", specs), "dup")
    trials, epochs = Base.metadata.tables["trials"], Base.metadata.tables["epoch_metrics"]
    with engine.begin() as connection:
        connection.execute(update(trials).where(trials.c.spec_hash == bindparam("h")).values(
            status="completed", test_acc=bindparam("acc"), asr=0.5, er=0.01),
            [{"h": s.spec_hash, "acc": 0.5 + 0.01 * i} for i, s in enumerate(specs)])
        ids = dict(connection.execute(trials.select().with_only_columns(trials.c.spec_hash, trials.c.id)).all())
        connection.execute(epochs.insert(), [{"trial_id": ids[s.spec_hash], "epoch": e, "test_acc": 0.4 + 0.05 * e,
                                              "ood_acc": 0.3, "er": 0.01} for s in specs for e in (1, 2)])
    engine.dispose()
    return db_url


def test_every_report_and_plot_refuses_two_trials_of_one_seed_in_a_cell(dup_url: str) -> None:
    from orchestrator.errors import UserError
    from orchestrator.results.plots import make_plot

    natural0 = "cell dataset=cifar10, subset_size=100, source=torchvision:resnet50 holds 2 trials for seed 0"
    expected = {  # report or plot -> what the one-line error must say
        ("report", "utrera-table7"): [natural0, "differ in params.lr"],
        ("report", "utrera-blocks"): ["blocks=3", "seed 0", "params.lr"],
        ("report", "renofeation"): ["arch=resnet50, method=finetune, dataset=cifar10", "params.lr", "source"],
        ("report", "er"): ["init=pretrained", "seed 1", "differ in kernel_version"],  # ER pools models, not reruns
        ("report", "demo"): ["dataset=cifar10, source=torchvision:resnet50, subset_size=100", "seed 0", "params.lr"],
        ("plot", "accuracy-delta"): [natural0, "params.lr"],
        ("plot", "learning-curve"): ["seed 0", "params.lr"],
        ("plot", "blocks"): ["seed 0", "params.lr"],
        ("plot", "asr-vs-clean"): ["method=finetune", "params.lr"],
        ("plot", "er"): ["seed 1", "kernel_version"],
        ("report", "study"): ["dataset=cifar10, source_label=natural, blocks=3", "seed 0", "params.lr"],
        ("plot", "study-accuracy"): ["source_label=natural", "subset_size=100", "seed 0", "params.lr"],
    }
    # the study's Chin and Andreassen plots find no arm here (no Renofeation runs, no ER trajectories); their
    # duplicate checks: tests/test_study_verdicts.py
    no_arm = {("plot", "study-asr"), ("plot", "study-er")}
    assert {name for kind, name in [*expected, *no_arm] if kind == "report"} == set(REPORTS)
    assert {name for kind, name in [*expected, *no_arm] if kind == "plot"} == set(PLOTS)
    for _, name in no_arm:
        with pytest.raises(UserError, match="experiment 'dup' has no"):
            make_plot(name, "dup", dup_url)
    for (kind, name), parts in expected.items():
        with pytest.raises(UserError) as info:
            build_report(name, "dup", dup_url) if kind == "report" else make_plot(name, "dup", dup_url)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{kind} {name}: cell "), message
        assert all(part in message for part in parts), (name, message)
    line = error_line(run_cli("report", "utrera-table7", "--experiment", "dup", "--db", dup_url, expect=2))
    assert natural0 in line


def test_paired_deltas_never_average_duplicates() -> None:
    frame = pd.DataFrame({"cell": ["a"] * 3, "seed": [0, 0, 0], "arm": ["r", "r", "n"], "acc": [0.9, 0.7, 0.6]})
    with pytest.raises(ValueError, match="more than one row"):
        stats.paired_deltas(frame, ["cell"], "arm", "r", "n", "acc")


def test_pooled_fields_are_allowed_to_differ() -> None:
    from orchestrator.errors import UserError
    from orchestrator.results.frames import require_one_trial_per_seed

    specs = _dup_specs()
    frame = pd.DataFrame({"dataset": "cifar10", "seed": [s.seed for s in specs],
                          "spec_json": [s.canonical_json() for s in specs]})
    require_one_trial_per_seed(frame, ["dataset"], "report x", pooled=("source", "params", "kernel_version"))
    with pytest.raises(UserError, match="differ in kernel_version, source"):
        require_one_trial_per_seed(frame[frame["seed"] == 1], ["dataset"], "report x")
