"""A small, plausible results database built by real means: real TrialSpecs, the planner's
record_plan through the Repository, then the outcomes (final metrics, epoch rows) written in bulk
on the real schema. Shared by test_query / test_reports / test_plots.

Experiments:
  utrera-mini  published sources (torchvision natural, robustness l2-3 / linf-4) -> cifar10, svhn;
               blocks 0 and 3; subset 100 / 400 (3 seeds) and full (2 seeds); scratch ER testbed;
               one failed and one pending trial
  smoke-mini   three grid-trained sources (spec:<hash>) -> digits, synthetic-target-a; random-init testbed
               (method retrain: source "scratch" at 50 images, else the natural source trial, as presets do)
  reno-mini    Renofeation methods and ablations on flower, bird for resnet18 and resnet50; 2 seeds
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from db_fixtures import PgServer
from sqlalchemy import Engine, bindparam, update

from db.models import Base
from db.repository import Repository
from orchestrator.plan.grids import Grid
from orchestrator.plan.planner import record_plan
from orchestrator.plan.spec import TrialSpec

EPOCHS = 4
UTRERA_SOURCES = {"natural": "torchvision:resnet50", "l2-3": "robustness:imagenet_l2_3_0",
                  "linf-4": "robustness:imagenet_linf_4"}
SOURCE_BONUS = {"natural": 0.0, "l2-3": 0.04, "linf-4": 0.02, "pgd-l2": 0.03, "pgd-linf": 0.01, "scratch": -0.15}
RENO_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear": ("linear", {"bn_mode": "eval"}),
    "finetune": ("finetune", {}),
    "delta": ("delta", {"lambda_feat": 0.1}),
    "retrain": ("retrain", {}),
    "renofeation": ("renofeation", {"lambda_feat": 5.0, "dropout": 0.1, "swa_epochs": 3}),
    "renofeation-no-swa": ("renofeation", {"lambda_feat": 5.0, "dropout": 0.1}),
    "delta-adv": ("delta", {"lambda_feat": 0.1, "adv_steps": 3, "adv_eps": 0.03, "adv_step": 0.01}),
}
RENO_ASR = {"linear": 0.95, "finetune": 0.85, "delta": 0.9, "retrain": 0.1, "renofeation": 0.08,
            "renofeation-no-swa": 0.15, "delta-adv": 0.5}


def _utrera_specs() -> list[TrialSpec]:
    specs = []
    sizes = {100: 3, 400: 3, None: 2}
    for source, dataset, blocks in itertools.product(UTRERA_SOURCES.values(), ("cifar10", "svhn"), (0, 3)):
        for size, seeds in sizes.items():
            for seed in range(seeds):
                specs.append(TrialSpec(kind="transfer", arch="resnet50", source=source, dataset=dataset,
                                       ood="cifar10.1" if dataset == "cifar10" else "noise-3", method="finetune",
                                       blocks=blocks, subset_size=size, seed=20_000_000 + 100_000 * seed,
                                       epochs=EPOCHS))
    for size, seed in itertools.product((100, 400, None), (0, 1)):
        specs.append(TrialSpec(kind="transfer", arch="resnet50", source="scratch", dataset="cifar10",
                               ood="cifar10.1", method="retrain", subset_size=size, seed=seed, epochs=EPOCHS))
    return specs


def _smoke_specs() -> list[TrialSpec]:
    sources = [TrialSpec(kind="source", arch="tiny_resnet", dataset="synthetic-source", method=m, seed=0, epochs=2)
               for m in ("natural", "pgd-l2", "pgd-linf")]
    transfers = [
        TrialSpec(kind="transfer", arch="tiny_resnet", source=f"spec:{src.spec_hash}", dataset=target, ood="noise-2",
                  method="finetune", blocks=blocks, subset_size=size, seed=seed, epochs=3)
        for src, target, blocks, size, seed in itertools.product(
            sources, ("digits", "synthetic-target-a"), (0, 3), (100, 400), (0, 1))
    ]
    natural = f"spec:{sources[0].spec_hash}"
    testbed = [TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch" if size == 50 else natural,
                         dataset=target, ood="noise-2", method="retrain", subset_size=size, seed=0, epochs=3)
               for target, size in itertools.product(("digits", "synthetic-target-a"), (50, 200, None))]
    return sources + transfers + testbed


VARIANT_OF: dict[str, str] = {}  # spec_hash -> Renofeation variant name


def _reno_specs() -> list[TrialSpec]:
    specs = []
    for arch, dataset, (name, (method, params)), seed in itertools.product(
            ("resnet18", "resnet50"), ("flower", "bird"), RENO_VARIANTS.items(), (0, 1)):
        spec = TrialSpec(kind="transfer", arch=arch, source=f"torchvision:{arch}", dataset=dataset,
                         method=method, blocks=0 if method == "linear" else None, seed=seed, epochs=EPOCHS,
                         params={"attack_steps": 5, **params})
        VARIANT_OF[spec.spec_hash] = name
        specs.append(spec)
    return specs


def _label(spec: TrialSpec, methods: dict[str, str]) -> str:
    source = spec.source or ""
    if spec.method == "retrain":
        return "scratch"
    if source.startswith("spec:"):
        return methods[source.removeprefix("spec:")]
    if source == "scratch":
        return "scratch"
    return next((k for k, v in UTRERA_SOURCES.items() if v == source), "natural")


def _outcomes(specs: list[TrialSpec], rng: np.random.Generator, methods: dict[str, str]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Final metrics and epoch rows for completed trials (plausible, random)."""
    finals, epochs = [], []
    for spec in specs:
        if spec.kind == "source":
            acc = float(rng.uniform(0.5, 0.9))
            finals.append({"h": spec.spec_hash, "test_acc": acc, "ood_acc": None, "asr": None, "er": None,
                           "robust_acc": acc / 2})
            continue
        if spec.method in ("finetune", "retrain") and spec.dataset in ("cifar10", "svhn", "digits",
                                                                        "synthetic-target-a"):
            size = spec.subset_size or 5000
            base = 0.35 + 0.1 * math.log10(size) + SOURCE_BONUS[_label(spec, methods)]
            base += 0.02 * (spec.blocks or 0) / 3
            asr = float(np.clip(rng.normal(0.6 - SOURCE_BONUS[_label(spec, methods)] * 5, 0.05), 0, 1))
        else:
            name = VARIANT_OF[spec.spec_hash]
            base = 0.6 + (0.05 if spec.arch == "resnet50" else 0.0) + (0.03 if "reno" in name else 0.0)
            asr = float(np.clip(rng.normal(RENO_ASR[name], 0.03), 0, 1))
        final = float(np.clip(base + rng.normal(0, 0.02), 0.01, 0.99))
        er_slope = 0.02 if spec.source == "scratch" else 0.05
        curve = []
        for epoch in range(1, spec.epochs + 1):
            acc = final if epoch == spec.epochs else float(np.clip(final * (0.6 + 0.4 * epoch / spec.epochs)
                                                                   + rng.normal(0, 0.01), 0.01, 0.99))
            ood = float(np.clip(acc - 0.1 + rng.normal(0, 0.02), 0.0, 1.0)) if spec.ood else None
            er = float(er_slope * (1 - acc) + rng.normal(0, 0.01)) if spec.ood else None
            curve.append((epoch, acc, ood, er))
            epochs.append({"h": spec.spec_hash, "epoch": epoch, "train_loss": float(2.0 / epoch),
                           "train_acc": float(min(acc + 0.05, 1.0)), "test_acc": acc, "ood_acc": ood, "er": er,
                           "lr": 0.1, "seconds": 1.5})
        finals.append({"h": spec.spec_hash, "test_acc": final, "ood_acc": curve[-1][2], "asr": asr,
                       "er": curve[-1][3], "robust_acc": None})
    return finals, epochs


def build_database(engine: Engine) -> dict[str, list[TrialSpec]]:
    """Fill a freshly migrated database; returns experiment -> its specs."""
    repo = Repository(engine)
    rng = np.random.default_rng(20240601)
    experiments = {"utrera-mini": _utrera_specs(), "smoke-mini": _smoke_specs(), "reno-mini": _reno_specs()}
    for name, specs in experiments.items():
        record_plan(repo, Grid(name, f"test grid {name}", specs), name)
    methods = {s.spec_hash: s.method for s in experiments["smoke-mini"] if s.kind == "source"}
    utrera = experiments["utrera-mini"]
    failed, pending = utrera[1], utrera[2]
    done = [s for specs in experiments.values() for s in specs if s not in (failed, pending)]
    finals, epochs = _outcomes(done, rng, methods)
    trials = Base.metadata.tables["trials"]
    epoch_table = Base.metadata.tables["epoch_metrics"]
    with engine.begin() as connection:
        ids = dict(connection.execute(trials.select().with_only_columns(trials.c.spec_hash, trials.c.id)).all())
        connection.execute(
            update(trials).where(trials.c.spec_hash == bindparam("h")).values(
                status="completed", attempts=1, duration_s=10.0,
                **{name: bindparam(f"v_{name}") for name in ("test_acc", "ood_acc", "asr", "er", "robust_acc")}),
            [{"h": row["h"], **{f"v_{k}": v for k, v in row.items() if k != "h"}} for row in finals])
        connection.execute(epoch_table.insert(), [
            {"trial_id": ids[row["h"]], **{k: v for k, v in row.items() if k != "h"}} for row in epochs])
    repo.mark_started(failed.spec_hash)
    repo.fail(failed.spec_hash, "CUDA out of memory")
    return experiments


# --- pytest fixtures (registered by conftest.py) -------------------------------------------------

@pytest.fixture(scope="module")
def results_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file (WAL mode, as rtgrid makes them) holding the three experiments."""
    from db.session import open_database

    url = f"sqlite:///{tmp_path_factory.mktemp('results') / 'results.sqlite'}"
    engine = open_database(url, create=True)
    build_database(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def results_postgres(pg_server: PgServer) -> Iterator[str]:
    """A fresh database on the tests' PostgreSQL server (db_fixtures.pg_server) for this module, dropped
    afterwards; skipped, or failed under $RTGRID_REQUIRE_PG=1, when the server is unreachable."""
    from db.session import open_database

    url = pg_server.new_database()
    try:
        engine = open_database(url, create=True)
        build_database(engine)
        engine.dispose()
        yield url
    finally:
        pg_server.drop(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def results_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes `results_url` runs on SQLite and on PostgreSQL."""
    return request.getfixturevalue("results_sqlite" if request.param == "sqlite" else "results_postgres")


def raw_frame(url: str, sql: str) -> pd.DataFrame:
    """Plain DBAPI + pandas, independent of orchestrator.results.query (the tests' own reader)."""
    if url.startswith("sqlite"):
        import sqlite3

        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            cursor = connection.execute(sql)
            columns = [d[0] for d in cursor.description]
            return pd.DataFrame.from_records(cursor.fetchall(), columns=columns)
        finally:
            connection.close()
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as connection:
        cursor = connection.execute(sql)
        columns = [d.name for d in cursor.description]
        return pd.DataFrame.from_records(cursor.fetchall(), columns=columns)


def db_fingerprint(url: str) -> object:
    """What a database holds, to compare before / after a command that must not write.

    SQLite: the main file's and the -wal file's bytes (an absent -wal = an empty one), plus every
    table's rows read over a `mode=ro` connection (so that a write still sitting in the WAL counts).
    PostgreSQL: every table's contents (md5 of its rows in a fixed order) and the sequences.
    """
    if url.startswith("sqlite"):
        import hashlib
        import sqlite3
        from pathlib import Path

        path = Path(url.removeprefix("sqlite:///"))
        wal = path.with_name(path.name + "-wal")
        files = [hashlib.sha256(p.read_bytes() if p.exists() else b"").hexdigest() for p in (path, wal)]
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                       "ORDER BY name")]
            rows = {t: hashlib.sha256(repr(sorted(map(repr, connection.execute(f'SELECT * FROM "{t}"')))).encode()
                                      ).hexdigest() for t in tables}
        finally:
            connection.close()
        return files, rows
    tables = raw_frame(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                            "AND table_type = 'BASE TABLE' ORDER BY table_name")["table_name"].tolist()
    contents = {t: str(raw_frame(url, f"SELECT md5(COALESCE(string_agg(x::text, ',' ORDER BY x::text), '')) AS h "
                                      f'FROM "{t}" x')["h"].iloc[0]) for t in tables}
    sequences = raw_frame(url, "SELECT sequencename, COALESCE(last_value, 0) AS last_value FROM pg_sequences "
                               "ORDER BY sequencename")
    return tables, contents, sequences.to_dict("records")


def raw_trials(url: str, experiment: str) -> pd.DataFrame:
    """Every trial of the experiment: SELECT * FROM trials, filtered through experiment_trials."""
    trials = raw_frame(url, "SELECT * FROM trials")
    links = raw_frame(url, "SELECT * FROM experiment_trials")
    experiments = raw_frame(url, "SELECT id, name FROM experiments")
    experiment_id = int(experiments.loc[experiments["name"] == experiment, "id"].iloc[0])
    ids = set(links.loc[links["experiment_id"] == experiment_id, "trial_id"])
    out = trials[trials["id"].isin(ids)].copy()
    out["spec_hash"] = out["spec_hash"].str.strip()
    return out


def expected_label(source: Any, url: str) -> str:
    """The tests' own source labels (natural / l2-3 / linf-4 / the source trial's method)."""
    if source is None or (isinstance(source, float) and math.isnan(source)):
        return "-"
    if source.startswith("spec:"):
        trials = raw_frame(url, "SELECT spec_hash, method FROM trials")
        match = trials[trials["spec_hash"].str.strip() == source.removeprefix("spec:")]
        return str(match["method"].iloc[0])
    if source.startswith("torchvision:"):
        return "natural"
    return {v: k for k, v in UTRERA_SOURCES.items()}.get(source, source)


def t_ci(values: pd.Series) -> tuple[int, float, float]:
    """(n, mean, 95% half-width) with scipy's t distribution, computed here independently."""
    from scipy import stats

    arr = values.dropna().to_numpy(float)
    if arr.size < 2:
        return int(arr.size), float(arr.mean()), float("nan")
    return int(arr.size), float(arr.mean()), float(stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1)
                                                   / math.sqrt(arr.size))


# --- the demo's numbers, recomputed from the raw rows ---------------------------------------------------

# Random-init trials, written out here (not imported) so the check stays independent of orchestrator.results.frames.
RANDOM_INIT = ("retrain", "renofeation", "delta-r")
PUBLISHED_ROBUST = {"imagenet_l2_3_0": "l2-3", "imagenet_linf_4": "linf-4", "imagenet_linf_8": "linf-8"}


def _source_labels(url: str) -> dict[str, str]:
    """source -> label for every source of the database (spec:<hash> -> that source trial's method)."""
    trials = raw_frame(url, "SELECT spec_hash, kind, method, source FROM trials")
    methods = {str(h).strip(): m for h, k, m in zip(trials["spec_hash"], trials["kind"], trials["method"],
                                                     strict=True) if k == "source"}
    labels = {}
    for source in trials["source"].dropna().unique():
        if source.startswith("spec:"):
            labels[source] = methods.get(source.removeprefix("spec:"), source)
        elif source.startswith("file:"):
            labels[source] = "file:" + source.rsplit("/", 1)[-1]
        elif source.startswith("torchvision:"):
            labels[source] = "natural"
        elif source.startswith("robustness:"):
            name = source.removeprefix("robustness:")
            labels[source] = PUBLISHED_ROBUST.get(name, name)
        else:
            labels[source] = source
    return labels


def _demo_trials(url: str, experiment: str) -> pd.DataFrame:
    """The demo's trials: completed transfers that start from pre-trained weights, one row each, with
    `source_label` and `last_er` (the ER of the trial's last epoch_metrics row)."""
    trials = raw_trials(url, experiment)
    trials = trials[(trials["kind"] == "transfer") & (trials["status"] == "completed")]
    random_init = trials["method"].isin(RANDOM_INIT) | (trials["source"].fillna("") == "scratch")
    trials = trials[~random_init].copy()
    trials["source_label"] = trials["source"].map(_source_labels(url))
    epochs = raw_frame(url, "SELECT trial_id, epoch, er FROM epoch_metrics")
    last = epochs.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")["er"]
    trials["last_er"] = trials["id"].map(last).astype(float)
    trials["subset_size"] = pd.to_numeric(trials["subset_size"]).astype("Int64")
    return trials


def _summary(trials: pd.DataFrame, keys: list[str], column: str, prefix: str = "") -> pd.DataFrame:
    records = []
    for values, group in trials.groupby(keys, dropna=False, sort=True):
        n, mean, ci = t_ci(group[column].astype(float))
        if n == 0:
            continue
        sd = float(group[column].astype(float).dropna().std(ddof=1)) if n > 1 else float("nan")
        records.append({**dict(zip(keys, values, strict=True)), f"{prefix}n": n, f"{prefix}mean": mean,
                        **({} if prefix else {"sd": sd}), f"{prefix}ci95": ci})
    return pd.DataFrame.from_records(records)


def independent_demo_frames(db_url: str, experiment: str) -> dict[str, pd.DataFrame]:
    """The numbers of the demo's closing tables (orchestrator.results.reports.demo_frames), recomputed with
    pandas + scipy from raw `trials` / `epoch_metrics` rows, sharing no code with orchestrator.

    Demo trials: completed transfers of `experiment` that are not random-init (method retrain /
    renofeation / delta-r, or source scratch); fractions, 95% t-intervals over the runs of a cell.

    Returns
    -------
    "accuracy": dataset, source_label, subset_size (Int64, <NA> = full), n, mean, sd, ci95 of the
        final test accuracy (trials.test_acc): table 1, pooled over seeds and block settings.
    "robustness": dataset, source_label, then test_acc_n/_mean/_ci95, asr_n/_mean/_ci95 (trials.asr)
        and er_n/_mean/_ci95 of the ER at each trial's LAST epoch_metrics row: table 2.
    "trials": the demo's trials, one row each (raw columns + source_label, last_er).
    """
    trials = _demo_trials(db_url, experiment)
    accuracy = _summary(trials, ["dataset", "source_label", "subset_size"], "test_acc")
    robustness = None
    for metric, column in (("test_acc", "test_acc"), ("asr", "asr"), ("er", "last_er")):
        part = _summary(trials, ["dataset", "source_label"], column, prefix=f"{metric}_")
        robustness = part if robustness is None else robustness.merge(part, on=["dataset", "source_label"],
                                                                      how="outer")
    return {"accuracy": accuracy, "robustness": robustness, "trials": trials}


def _frames_close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def assert_frames_agree(ours: pd.DataFrame, theirs: pd.DataFrame, keys: list[str]) -> None:
    """Same cells, and every shared numeric column equal (NaN = NaN)."""
    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        if "subset_size" in keys:
            frame["subset_size"] = frame["subset_size"].astype("Int64").astype(str)
        return frame.set_index(keys).sort_index()

    a, b = keyed(ours), keyed(theirs)
    assert list(a.index) == list(b.index)
    columns = [c for c in a.columns if c in b.columns]
    assert {"mean", "ci95"} <= set(columns) or {"asr_mean", "er_mean"} <= set(columns)
    for column in columns:
        assert all(_frames_close(float(x), float(y)) for x, y in zip(a[column], b[column], strict=True)), column
