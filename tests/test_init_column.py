"""`trials.init` (pretrained | random | distilled): the planner's rule against the catalog, the
results view and frame on SQLite and PostgreSQL, the README's grouping (a retrain trial from the
natural source is not pooled into "natural"), and revision 0004's back-fill of existing rows.
"""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from results_data import raw_frame
from sqlalchemy import inspect, text

from db.models import INITS, TrialInit
from db.repository import Repository
from db.session import (
    SCRIPT_LOCATION,
    _script,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    open_database,
    upgrade,
)
from orchestrator.plan.grids import Grid
from orchestrator.plan.planner import record_plan, trial_init, trial_row
from orchestrator.plan.spec import TrialSpec
from orchestrator.results import results_frame
from workers.trainable import METHODS

# What each transfer method means (the brief of issue 11): a new method must be placed here on purpose.
EXPECTED = {"linear": "pretrained", "finetune": "pretrained", "l2sp": "pretrained", "delta": "pretrained",
            "retrain": "random", "renofeation": "distilled", "delta-r": "distilled"}
NATURAL = "torchvision:resnet18"


def _transfer(method: str, source: str = NATURAL, **fields: Any) -> TrialSpec:
    spec = {"kind": "transfer", "arch": "resnet18", "source": source, "dataset": "digits", "ood": "noise-2",
            "method": method, "blocks": 0 if METHODS[method].linear else None, "seed": 0, "epochs": 2, **fields}
    return TrialSpec(**spec)


def _source(method: str) -> TrialSpec:
    return TrialSpec(kind="source", arch="tiny_resnet", dataset="synthetic-source", method=method, seed=0, epochs=2)


def _by_traits(method: str) -> str:
    traits = METHODS[method]
    if traits.kind == "source":
        return "random"
    if traits.random_init:
        return "distilled" if traits.distils else "random"
    return "pretrained"


# --- the rule ------------------------------------------------------------------------------------


def test_init_values_are_the_schemas() -> None:
    assert INITS == ("pretrained", "random", "distilled") == tuple(TrialInit)


@pytest.mark.parametrize("method", list(METHODS))
def test_planner_rule_equals_the_catalogs_traits(method: str) -> None:
    """Contract: for every catalog method the planner writes what the traits say (random_init and
    not distils -> random; random_init and distils -> distilled; source trials -> random)."""
    spec = _source(method) if METHODS[method].kind == "source" else _transfer(method)
    assert trial_init(spec) == _by_traits(method)
    assert trial_row(spec)["init"] == _by_traits(method)
    if METHODS[method].kind == "transfer":
        assert trial_init(spec) == EXPECTED[method], f"a new transfer method {method!r}: decide its init"
        assert (trial_init(spec) == "random") == METHODS[method].testbed  # the ER testbed is init = random


@pytest.mark.parametrize("method", ["finetune", "linear", "retrain"])
def test_scratch_is_random(method: str) -> None:
    assert trial_init(_transfer(method, source="scratch")) == TrialInit.RANDOM


def _revision_0004() -> Any:
    script = _script(SCRIPT_LOCATION).get_revision("0004")
    assert script is not None and script.down_revision == "0003"
    source = Path(script.path).read_text()
    imports = [f"\n{word} {package}" for word in ("from", "import") for package in ("db", "workers")]
    assert not any(line in source for line in imports), "a frozen snapshot: no db.models or catalog import"
    return import_module(f"migrations.versions.{Path(script.path).stem}")


def test_backfill_rule_is_the_catalogs_at_0004() -> None:
    """0004 writes the rule out literally; for the methods it knows it must agree with the catalog
    (a method added later is planned with its value: old databases hold no row of it)."""
    module = _revision_0004()
    for method in (*module.RANDOM_METHODS, *module.DISTILLED_METHODS):
        assert method in METHODS
    assert set(module.RANDOM_METHODS) == {m for m in module.RANDOM_METHODS if _by_traits(m) == "random"}
    assert set(module.DISTILLED_METHODS) == {m for m in module.DISTILLED_METHODS if _by_traits(m) == "distilled"}
    assert module.INITS == INITS


# --- the view and the frame -----------------------------------------------------------------------


def _expected_init(kind: str, method: str, source: Any) -> str:
    if kind == "source" or source == "scratch":
        return "random"
    return EXPECTED[method]


def test_view_and_frame_have_init(results_url: str) -> None:
    view = raw_frame(results_url, "SELECT experiment, kind, method, source, init FROM results")
    assert set(view["init"]) == {"pretrained", "random", "distilled"}
    for row in view.itertuples():
        assert row.init == _expected_init(row.kind, row.method, row.source), row
    # a retrain trial whose source is the natural source trial (kept for ASR) is random, not pretrained
    smoke = view[(view["experiment"] == "smoke-mini") & (view["method"] == "retrain")]
    assert smoke["source"].str.startswith("spec:").any() and set(smoke["init"]) == {"random"}
    for experiment in ("utrera-mini", "smoke-mini", "reno-mini"):
        frame = results_frame(experiment, db=results_url)
        assert "init" in frame.columns
        assert list(frame.columns).index("init") == list(frame.columns).index("epochs") + 1
        expected = [_expected_init(k, m, s) for k, m, s in zip(frame["kind"], frame["method"], frame["source"],
                                                               strict=True)]
        assert frame["init"].tolist() == expected
    reno = results_frame("reno-mini", db=results_url)
    assert set(reno.loc[reno["method"].isin(["renofeation"]), "init"]) == {"distilled"}
    assert set(reno.loc[reno["method"].isin(["finetune", "linear", "delta"]), "init"]) == {"pretrained"}


# --- the README's recipe ---------------------------------------------------------------------------


def _pooling_grid() -> tuple[Grid, dict[str, float]]:
    """A natural source trial, two fine-tuned transfers and one retrain (random init, the natural
    source kept for ASR) in the same digits/100 cell; returns the grid and spec_hash -> test_acc."""
    source = _source("natural")
    natural = f"spec:{source.spec_hash}"
    finetuned = [_transfer("finetune", source=natural, subset_size=100, seed=seed) for seed in (0, 1)]
    retrain = _transfer("retrain", source=natural, subset_size=100, seed=0)
    accuracy = {source.spec_hash: 0.9, finetuned[0].spec_hash: 0.22, finetuned[1].spec_hash: 0.215,
                retrain.spec_hash: 0.2}
    return Grid("pooling", "a natural cell with a retrain trial", [source, *finetuned, retrain]), accuracy


def test_readme_recipe_does_not_pool_retrain_into_natural(db_url: str) -> None:
    grid, accuracy = _pooling_grid()
    repo = Repository(open_database(db_url, create=True))
    try:
        record_plan(repo, grid, "pooling")
        for spec_hash, acc in accuracy.items():
            repo.mark_started(spec_hash, "host")
            repo.complete(spec_hash, {"test_acc": acc})
    finally:
        repo.close()
    df = results_frame("pooling", db=db_url)
    done = df[(df.status == "completed") & (df.kind == "transfer")]
    assert set(done["source_label"]) == {"natural"}  # the retrain trial's label reads "natural" too
    pretrained_only = done[done["method"] == "finetune"]["test_acc"].mean()
    old = done.groupby(["dataset", "subset_size", "source_label"]).test_acc.mean()
    assert old[("digits", 100, "natural")] != pytest.approx(pretrained_only)  # the pooling this fixes
    # the README's line
    table = done.groupby(["dataset", "subset_size", "init", "source_label"]).test_acc.mean().unstack()
    assert table.loc[("digits", 100, "pretrained"), "natural"] == pytest.approx(pretrained_only)
    assert table.loc[("digits", 100, "random"), "natural"] == pytest.approx(0.2)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert 'groupby(["dataset", "subset_size", "init", "source_label"])' in readme


# --- revision 0004 back-fills existing rows ---------------------------------------------------------


def _backfill_specs() -> list[TrialSpec]:
    sources = [_source("natural"), _source("pgd-l2")]
    natural = f"spec:{sources[0].spec_hash}"
    transfers = [_transfer(method, source=natural) for method in EXPECTED]
    transfers += [_transfer(method) for method in EXPECTED]  # a published source
    transfers += [_transfer("finetune", source="scratch"), _transfer("retrain", source="scratch")]
    return [*sources, *transfers]


def _insert_at_0003(url: str, specs: list[TrialSpec]) -> None:
    """Rows as a 0003 database holds them: plain SQL, no init column, with epochs and a link."""
    columns = ("kind", "arch", "source", "dataset", "ood", "method", "blocks", "subset_size", "seed", "epochs")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO experiments (name, grid) VALUES ('old', 'old-grid')"))
            for spec in specs:
                values = {name: getattr(spec, name) for name in columns}
                values |= {"spec_hash": spec.spec_hash, "spec_json": spec.canonical_json(), "status": "completed",
                           "test_acc": 0.5}
                names = ", ".join(values)
                connection.execute(text(f"INSERT INTO trials ({names}) VALUES "
                                        f"({', '.join(':' + n for n in values)})"), values)
            connection.execute(text("INSERT INTO experiment_trials (experiment_id, trial_id) "
                                    "SELECT e.id, t.id FROM experiments e, trials t"))
            connection.execute(text("INSERT INTO epoch_metrics (trial_id, epoch, test_acc) "
                                    "SELECT id, 1, 0.4 FROM trials"))
    finally:
        engine.dispose()


def _scalar(url: str, sql: str) -> Any:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


def _trial_columns(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [c["name"] for c in inspect(connection).get_columns("trials")]
    finally:
        engine.dispose()


def test_backfill_from_0003(db_url: str) -> None:
    upgrade(db_url, "0003")
    specs = _backfill_specs()
    _insert_at_0003(db_url, specs)
    upgrade(db_url)  # through 0004 and the later revisions (0005 adds er columns in place)
    assert current_revision(db_url) == head_revision()
    stored = dict(raw_frame(db_url, "SELECT spec_hash, init FROM trials").itertuples(index=False))
    stored = {str(h).strip(): init for h, init in stored.items()}
    assert stored == {spec.spec_hash: trial_init(spec).value for spec in specs}  # = what the planner writes
    assert set(stored.values()) == set(INITS)
    counts = ("SELECT count(*) FROM trials", "SELECT count(*) FROM epoch_metrics",
              "SELECT count(*) FROM experiment_trials")
    assert [_scalar(db_url, sql) for sql in counts] == [len(specs)] * 3  # the SQLite rebuild cascaded nothing
    view = raw_frame(db_url, "SELECT spec_hash, method, source, init, last_epoch FROM results")
    assert len(view) == len(specs) and set(view["last_epoch"]) == {1}
    assert {str(h).strip(): i for h, i in zip(view["spec_hash"], view["init"], strict=True)} == stored
    frame = results_frame("old", db=db_url)
    assert dict(zip(frame["spec_hash"], frame["init"], strict=True)) == stored
    # new rows are checked: the column is NOT NULL and CHECKed
    engine = make_engine(db_url)
    try:
        for bad in ("'scratch'", "NULL"):
            with pytest.raises(Exception, match="(?i)check|not.null|null value"), engine.begin() as connection:
                connection.execute(text(
                    "INSERT INTO trials (spec_hash, spec_json, kind, arch, dataset, method, seed, epochs, init) "
                    f"VALUES ('{'f' * 64}', '{{}}', 'transfer', 'a', 'd', 'finetune', 0, 1, {bad})"))
    finally:
        engine.dispose()
    # and down again (through 0005's and 0004's downgrades): the column goes, the rows and the 0001 view stay
    downgrade(db_url, "0003")
    assert "init" not in _trial_columns(db_url)
    assert [_scalar(db_url, sql) for sql in counts] == [len(specs)] * 3
    assert _scalar(db_url, "SELECT count(*) FROM results") == len(specs)
    upgrade(db_url)  # and up again: view, init and rows kept
    assert current_revision(db_url) == head_revision()
    assert [_scalar(db_url, sql) for sql in counts] == [len(specs)] * 3
    assert _scalar(db_url, "SELECT count(*) FROM results WHERE init = 'distilled'") == 4
    view = raw_frame(db_url, "SELECT spec_hash, init, last_epoch FROM results")
    assert {str(h).strip(): i for h, i in zip(view["spec_hash"], view["init"], strict=True)} == stored
    assert set(view["last_epoch"]) == {1}
    open_database(db_url, create=False).dispose()


def test_spec_json_round_trip_keeps_init() -> None:
    """`rtgrid resume` rebuilds specs from spec_json: the rebuilt spec plans the same init."""
    for spec in _backfill_specs():
        assert trial_init(TrialSpec.from_json(spec.canonical_json())) == trial_init(spec)
        assert json.loads(spec.canonical_json())["method"] == spec.method
