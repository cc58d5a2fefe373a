"""Repository and schema on a real SQLite file and a real PostgreSQL database.

Invariants are checked against the database itself (raw SQL must hit the constraints), and
every write is replayed to show that replays are harmless.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DatabaseError as SQLDatabaseError
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from db.models import KEY_COLUMNS
from db.readonly import open_readonly
from db.repository import PlanResult, Repository, utc_now
from db.session import (
    DEFAULT_URL,
    DatabaseError,
    normalise_url,
    open_database,
    resolve_url,
    safe_url,
)

INIT_OF_METHOD = {"retrain": "random", "renofeation": "distilled", "delta-r": "distilled"}


def spec_row(i: int, **overrides: Any) -> dict[str, Any]:
    """A synthetic trials row shaped like orchestrator.plan.planner.trial_row."""
    spec = {"kind": "transfer", "arch": "resnet50", "source": f"robustness:src{i % 4}", "dataset": "cifar10",
            "ood": "cifar10.1", "method": "finetune", "blocks": (0, 1, 3, 9)[i % 4],
            "subset_size": None if i % 10 == 0 else 100 * (1 + i % 9), "seed": i, "epochs": 10, **overrides}
    spec_json = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    # init as the planner derives it (tests/test_init_column.py checks the planner against the catalog)
    init = "random" if spec["source"] == "scratch" else INIT_OF_METHOD.get(spec["method"], "pretrained")
    return {"spec_hash": hashlib.sha256(spec_json.encode()).hexdigest(), "spec_json": spec_json,
            **{name: spec[name] for name in KEY_COLUMNS}, "init": init}


def sql(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as connection:
        result = connection.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def one(engine: Engine, statement: str, **params: Any) -> Any:
    rows = sql(engine, statement, **params)
    assert len(rows) == 1
    return rows[0]


def planned(repo: Repository, experiment: str, rows: list[dict[str, Any]]) -> tuple[int, PlanResult]:
    experiment_id = repo.ensure_experiment(experiment, "test-grid")
    return experiment_id, repo.plan_trials(experiment_id, rows)


# --- the schema enforces the invariants -------------------------------------------------------------


def raw_trial(repo: Repository, spec_hash: str, **columns: Any) -> None:
    """INSERT a trials row with plain SQL (no repository code in the way)."""
    values = {"spec_hash": spec_hash, "spec_json": "{}", "status": "pending", "kind": "transfer", "arch": "a",
              "dataset": "d", "method": "finetune", "seed": 0, "epochs": 1, "init": "pretrained", **columns}
    names = ", ".join(values)
    sql(repo.engine, f"INSERT INTO trials ({names}) VALUES ({', '.join(':' + n for n in values)})", **values)


def test_unique_spec_hash_is_enforced_by_the_database(repo: Repository) -> None:
    raw_trial(repo, "a" * 64)
    with pytest.raises(IntegrityError):
        raw_trial(repo, "a" * 64)


@pytest.mark.parametrize("columns", [
    {"status": "done"},  # not a status
    {"test_acc": 1.5},  # accuracies are fractions
    {"asr": -0.1},
    {"er": 1.5},
    {"epochs": 0},
    {"subset_size": 0},
    {"init": "scratch"},  # pretrained | random | distilled
    {"init": None},  # the planner always writes it
], ids=lambda c: next(iter(c)))
def test_check_constraints(repo: Repository, columns: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError):
        raw_trial(repo, "b" * 64, **columns)
    assert one(repo.engine, "SELECT count(*) FROM trials")[0] == 0


def test_epoch_and_link_constraints(repo: Repository) -> None:
    raw_trial(repo, "c" * 64)
    trial_id = one(repo.engine, "SELECT id FROM trials")[0]
    sql(repo.engine, "INSERT INTO epoch_metrics (trial_id, epoch, test_acc) VALUES (:t, 1, 0.5)", t=trial_id)
    with pytest.raises(IntegrityError):  # UNIQUE(trial_id, epoch)
        sql(repo.engine, "INSERT INTO epoch_metrics (trial_id, epoch) VALUES (:t, 1)", t=trial_id)
    with pytest.raises(IntegrityError):  # the trial must exist (SQLite: foreign_keys=ON)
        sql(repo.engine, "INSERT INTO epoch_metrics (trial_id, epoch) VALUES (:t, 1)", t=trial_id + 1000)
    with pytest.raises(IntegrityError):
        sql(repo.engine, "INSERT INTO epoch_metrics (trial_id, epoch, test_acc) VALUES (:t, 2, 2.0)", t=trial_id)
    repo.ensure_experiment("e", "g")
    with pytest.raises(IntegrityError):  # experiments.name UNIQUE
        sql(repo.engine, "INSERT INTO experiments (name, grid) VALUES ('e', 'g')")
    with pytest.raises(IntegrityError):
        sql(repo.engine, "INSERT INTO er_baselines (id_dataset, ood_dataset, transform, slope, intercept, n_points, "
                         "fitted_from) VALUES ('a', 'b', 'linear', 1, 0, 3, 'x')")


def test_deletes_cascade(repo: Repository) -> None:
    experiment_id, _ = planned(repo, "e", [spec_row(i) for i in range(3)])
    first = spec_row(0)["spec_hash"]
    repo.record_epoch(first, 1, {"test_acc": 0.5})
    sql(repo.engine, "DELETE FROM experiments WHERE id = :e", e=experiment_id)
    assert one(repo.engine, "SELECT count(*) FROM experiment_trials")[0] == 0
    assert one(repo.engine, "SELECT count(*) FROM trials")[0] == 3  # trials outlive their experiments
    sql(repo.engine, "DELETE FROM trials WHERE spec_hash = :h", h=first)
    assert one(repo.engine, "SELECT count(*) FROM epoch_metrics")[0] == 0


# --- planning ---------------------------------------------------------------------------------------


def test_plan_trials_is_idempotent(repo: Repository) -> None:
    rows = [spec_row(i) for i in range(50)]
    experiment_id, first = planned(repo, "grid-a", rows + rows[:5])  # duplicates in the input count once
    assert first == PlanResult(new=50, already_completed=0, already_pending=0, linked=50, total=50)
    again = repo.plan_trials(experiment_id, rows)
    assert again == PlanResult(new=0, already_completed=0, already_pending=50, linked=0, total=50)
    assert repo.ensure_experiment("grid-a", "other-grid") == experiment_id
    assert one(repo.engine, "SELECT count(*) FROM trials")[0] == 50
    stored = one(repo.engine, "SELECT kind, arch, source, dataset, ood, method, blocks, subset_size, seed, epochs, "
                              "status, attempts FROM trials WHERE spec_hash = :h", h=rows[10]["spec_hash"])
    assert tuple(stored) == (*(rows[10][name] for name in KEY_COLUMNS), "pending", 0)
    assert repo.experiment_spec_jsons(experiment_id) == [row["spec_json"] for row in rows]


def test_two_experiments_share_specs(repo: Repository) -> None:
    a_id, _ = planned(repo, "a", [spec_row(i) for i in range(10)])
    for i in range(5, 8):  # three of the shared specs completed under "a"
        repo.mark_started(spec_row(i)["spec_hash"])
        repo.complete(spec_row(i)["spec_hash"], {"test_acc": 0.5})
    b_id, result = planned(repo, "b", [spec_row(i) for i in range(5, 15)])
    assert result == PlanResult(new=5, already_completed=3, already_pending=2, linked=10, total=10)
    assert one(repo.engine, "SELECT count(*) FROM trials")[0] == 15
    per_experiment = dict(sql(repo.engine, "SELECT experiment, count(*) FROM results GROUP BY experiment"))
    assert per_experiment == {"a": 10, "b": 10}
    assert [row.status for row in repo.trials_to_run(b_id, stale_after_s=60)].count("pending") == 7
    assert repo.status_counts("b")["completed"] == 3 and repo.status_counts("a")["completed"] == 3
    assert repo.status_counts()["pending"] == 12
    assert repo.list_experiments() == ["a", "b"] and repo.experiment_id("b") == b_id
    assert repo.experiment_id("nope") is None and a_id != b_id


@pytest.mark.slow  # a few seconds on PostgreSQL
def test_bulk_plan_of_14400_specs(repo: Repository, db_backend: str, capsys: pytest.CaptureFixture) -> None:
    rows = [spec_row(i) for i in range(14_400)]
    experiment_id = repo.ensure_experiment("utrera-size", "utrera")
    started = time.perf_counter()
    result = repo.plan_trials(experiment_id, rows)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = repo.plan_trials(experiment_id, rows)
    second = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[{db_backend}] plan_trials 14,400 specs: {first:.2f} s new, {second:.2f} s replanned")
    assert (result.new, result.linked, result.total) == (14_400, 14_400, 14_400)
    assert (again.new, again.linked, again.already_pending) == (0, 0, 14_400)
    assert repo.status_counts("utrera-size")["pending"] == 14_400


# --- the trial lifecycle ------------------------------------------------------------------------------


def test_record_epoch_is_an_idempotent_upsert(repo: Repository) -> None:
    _, _ = planned(repo, "e", [spec_row(1)])
    spec_hash = spec_row(1)["spec_hash"]
    repo.mark_started(spec_hash, worker="node-1")
    before = repo.trial_by_hash(spec_hash).heartbeat_at
    metrics = {"train_loss": 1.2, "train_acc": 0.4, "test_acc": 0.5, "ood_acc": None, "lr": 0.1, "seconds": 3.0}
    repo.record_epoch(spec_hash, 1, metrics)
    repo.record_epoch(spec_hash, 1, metrics)  # a replayed report
    repo.record_epoch(spec_hash, 1, {"test_acc": 0.55, "ood_acc": 0.3, "train_loss": None})  # a later, fuller one
    rows = repo.epoch_rows("e")
    assert len(rows) == 1
    row = rows[0]
    assert (row.epoch, row.test_acc, row.ood_acc, row.train_loss, row.lr) == (1, 0.55, 0.3, 1.2, 0.1)
    assert row.spec_hash == spec_hash and row.dataset == "cifar10"
    assert repo.trial_by_hash(spec_hash).heartbeat_at >= before
    with pytest.raises(ValueError, match="unknown epoch metric"):
        repo.record_epoch(spec_hash, 2, {"accuracy": 0.5})
    with pytest.raises(LookupError):
        repo.record_epoch("f" * 64, 1, {"test_acc": 0.5})


def test_completed_is_never_downgraded(repo: Repository) -> None:
    experiment_id, _ = planned(repo, "e", [spec_row(1)])
    spec_hash = spec_row(1)["spec_hash"]
    assert repo.mark_started(spec_hash, worker="node-1")
    assert repo.complete(spec_hash, {"test_acc": 0.8, "ood_acc": 0.6, "asr": 0.25, "clean_acc": 0.79,
                                     "adv_acc": 0.6, "checkpoint_uri": None, "duration_s": 12.5})
    done = repo.trial_by_hash(spec_hash)
    # Late and replayed reports of every kind:
    assert not repo.mark_started(spec_hash, worker="node-2")
    assert not repo.fail(spec_hash, "worker lost")
    assert not repo.complete(spec_hash, {"test_acc": 0.1})
    assert repo.cancel_experiment(experiment_id) == 0
    assert repo.reset_for_retry(experiment_id, statuses=("failed", "cancelled", "running")) == 0
    assert repo.heartbeat([spec_hash]) == 0
    with pytest.raises(ValueError, match="completed"):
        repo.reset_for_retry(experiment_id, statuses=("completed",))
    after = repo.trial_by_hash(spec_hash)
    assert after == done
    assert (after.status, after.test_acc, after.asr, after.duration_s, after.attempts,
            after.worker) == ("completed", 0.8, 0.25, 12.5, 1, "node-1")
    assert repo.trials_to_run(experiment_id, stale_after_s=0) == []


def test_completed_trials_epochs_are_immutable(repo: Repository) -> None:
    """A duplicated run (a lost report that made the driver run a finished spec again) cannot
    overwrite what was recorded when the trial completed."""
    _, _ = planned(repo, "e", [spec_row(1)])
    spec_hash = spec_row(1)["spec_hash"]
    repo.mark_started(spec_hash)
    assert repo.record_epoch(spec_hash, 1, {"test_acc": 0.5})
    assert repo.complete(spec_hash, {"test_acc": 0.5})
    assert not repo.record_epoch(spec_hash, 1, {"test_acc": 0.9})  # the replayed run's epoch 1
    assert not repo.record_epoch(spec_hash, 2, {"test_acc": 0.9})  # and a new epoch row
    assert [(r.epoch, r.test_acc) for r in repo.epoch_rows("e")] == [(1, 0.5)]


def test_a_report_is_one_transaction(repo: Repository) -> None:
    """The recorder applies a Tune report's events together: a failing event undoes the batch."""
    from orchestrator.run.recorder import record_report

    _, _ = planned(repo, "e", [spec_row(1)])
    spec_hash = spec_row(1)["spec_hash"]
    good = [{"event": "started", "spec_hash": spec_hash, "attempt": 1, "node": "n1"},
            {"event": "epoch", "spec_hash": spec_hash, "epoch": 1, "test_acc": 0.4}]
    unknown = {"event": "epoch", "spec_hash": "f" * 64, "epoch": 1, "test_acc": 0.4}
    with pytest.raises(LookupError):
        record_report(repo, {"event": "batch", "events": [*good, unknown]})
    assert repo.trial_by_hash(spec_hash).status == "pending" and repo.epoch_rows("e") == []
    record_report(repo, {"event": "batch", "events": good})
    assert repo.trial_by_hash(spec_hash).status == "running" and len(repo.epoch_rows("e")) == 1


def test_claims_split_work_between_live_drivers(repo: Repository) -> None:
    experiment_id, _ = planned(repo, "e", [spec_row(i) for i in range(6)])
    hashes = [spec_row(i)["spec_hash"] for i in range(6)]
    repo.mark_started(hashes[5])
    repo.fail(hashes[5], "boom")  # failed trials are claimable (and queued as pending again)
    first = repo.claim("driver-a", hashes[:4], stale_after_s=120)
    assert sorted(first) == sorted(hashes[:4])
    second = repo.claim("driver-b", hashes, stale_after_s=120)  # a second live driver
    assert sorted(second) == sorted(hashes[4:])
    assert repo.trial_by_hash(hashes[5]).status == "pending"
    assert sorted(repo.claim("driver-a", hashes[:4], stale_after_s=120)) == sorted(hashes[:4])
    assert repo.claim_counts("driver-a")["pending"] == 4

    # driver-a dies: its running trial and its queue keep their claims until the heartbeat is stale.
    repo.mark_started(hashes[0])
    assert repo.claim("driver-b", hashes[:4], stale_after_s=120) == []
    sql(repo.engine, "UPDATE trials SET heartbeat_at = :t WHERE claimed_by = 'driver-a'",
        t=utc_now() - timedelta(minutes=10))
    assert repo.heartbeat_claims("driver-b") == 2
    taken = repo.claim("driver-b", hashes[:4], stale_after_s=120)
    assert sorted(taken) == sorted(hashes[:4])
    assert repo.trial_by_hash(hashes[0]).status == "pending"  # the abandoned run is queued again
    assert repo.trials_to_run(experiment_id, stale_after_s=120)  # still listed: claims decide who runs

    # driver-b stops with a trial still running: it is failed (resume runs it), and no claim is left.
    repo.mark_started(hashes[1])
    repo.complete(hashes[2], {"test_acc": 0.7})
    assert repo.release_claims("driver-b", "interrupted") == 1
    after = {h: repo.trial_by_hash(h) for h in hashes}
    assert (after[hashes[1]].status, after[hashes[1]].error) == ("failed", "interrupted")
    assert after[hashes[2]].status == "completed"
    assert all(row.claimed_by is None for row in after.values())


def test_a_driver_that_stops_early_leaves_failed_trials_failed(repo: Repository) -> None:
    """Claiming queues a failed trial as pending; if the driver stops before it starts (Ray would not
    start, Ctrl-C), releasing the claim gives it back its failed status and error."""
    experiment_id, _ = planned(repo, "e", [spec_row(i) for i in range(2)])
    failed, pending = spec_row(0)["spec_hash"], spec_row(1)["spec_hash"]
    repo.mark_started(failed)
    repo.fail(failed, "KernelInputError: no dataset")
    assert sorted(repo.claim("driver-a", [failed, pending], stale_after_s=120)) == sorted([failed, pending])
    assert repo.trial_by_hash(failed).status == "pending"
    assert repo.release_claims("driver-a", "interrupted") == 0
    assert (repo.trial_by_hash(failed).status, repo.trial_by_hash(failed).error) == (
        "failed", "KernelInputError: no dataset")
    assert repo.trial_by_hash(pending).status == "pending"
    assert repo.reset_for_retry(experiment_id) == 1  # `rtgrid retry --failed` still finds it


def test_failure_retry_and_cancel(repo: Repository) -> None:
    experiment_id, _ = planned(repo, "e", [spec_row(i) for i in range(4)])
    hashes = [spec_row(i)["spec_hash"] for i in range(4)]
    repo.mark_started(hashes[0])
    assert repo.fail(hashes[0], "KernelInputError: no dataset at /data/cifar10")
    failed = repo.trial_by_hash(hashes[0])
    assert (failed.status, failed.attempts, failed.error) == ("failed", 1, "KernelInputError: no dataset "
                                                                                   "at /data/cifar10")
    assert failed.finished_at is not None
    runnable = {row.spec_hash: row.status for row in repo.trials_to_run(experiment_id, stale_after_s=60)}
    assert runnable == {hashes[0]: "failed", hashes[1]: "pending", hashes[2]: "pending", hashes[3]: "pending"}

    repo.mark_started(hashes[1])
    assert repo.cancel_experiment(experiment_id) == 3  # pending and running; the failed one stays failed
    assert not repo.any_cancelled([]) and repo.any_cancelled(hashes[:2])
    assert repo.fail(hashes[1], "stopped")  # the stopped run reports a failure: it stays cancelled
    assert repo.trial_by_hash(hashes[1]).status == "cancelled"
    assert not repo.mark_started(hashes[1])  # and does not start again by itself
    assert [row.spec_hash for row in repo.trials_to_run(experiment_id, stale_after_s=0)] == [hashes[0]]

    assert repo.reset_for_retry(experiment_id, statuses=("cancelled",)) == 3
    assert repo.status_counts("e") == {"pending": 3, "running": 0, "completed": 0, "failed": 1, "cancelled": 0}
    assert repo.reset_for_retry(experiment_id) == 1  # failed ones, by default
    repo.mark_started(hashes[0])
    assert repo.trial_by_hash(hashes[0]).attempts == 2
    assert repo.trial_by_hash(hashes[0]).error is None


def test_stale_running_trials_run_again(repo: Repository) -> None:
    experiment_id, _ = planned(repo, "e", [spec_row(i) for i in range(2)])
    running = spec_row(0)["spec_hash"]
    repo.mark_started(running)
    assert repo.heartbeat([running, spec_row(1)["spec_hash"]]) == 1  # only running trials beat
    alive = repo.trials_to_run(experiment_id, stale_after_s=3600)
    assert [row.spec_hash for row in alive] == [spec_row(1)["spec_hash"]]
    dead = repo.trials_to_run(experiment_id, stale_after_s=0)
    assert {row.spec_hash: row.status for row in dead}[running] == "running"
    only_running = repo.trials_to_run(experiment_id, stale_after_s=0, statuses=())
    assert [row.spec_hash for row in only_running] == [running]
    # A heartbeat older than the threshold: the driver died.
    sql(repo.engine, "UPDATE trials SET heartbeat_at = :t WHERE spec_hash = :h",
        t=utc_now() - timedelta(minutes=10), h=running)
    assert running in {row.spec_hash for row in repo.trials_to_run(experiment_id, stale_after_s=120)}


def test_complete_fills_duration_and_throughput(repo: Repository) -> None:
    planned(repo, "e", [spec_row(i) for i in range(3)])
    for i in range(2):
        spec_hash = spec_row(i)["spec_hash"]
        repo.mark_started(spec_hash, worker="gpu-node-3")
        repo.complete(spec_hash, {"test_acc": 0.7, "checkpoint_uri": f"/artifacts/{i}.pt"})
    trial = repo.trial_by_hash(spec_row(0)["spec_hash"])
    assert trial.duration_s is not None and trial.duration_s >= 0
    assert trial.checkpoint_uri == "/artifacts/0.pt" and trial.worker == "gpu-node-3"
    assert trial.finished_at.tzinfo is not None
    throughput = repo.throughput("e")
    assert throughput.completed == 2 and throughput.mean_duration_s is not None
    assert throughput.window_s == 60.0  # the work began less than a minute ago
    assert repo.completed_per_hour("e") == pytest.approx(120.0)
    assert repo.completed_per_hour("other") == 0.0
    assert repo.status_counts_for([spec_row(i)["spec_hash"] for i in range(3)])["completed"] == 2
    with pytest.raises(ValueError, match="unknown final field"):
        repo.complete(spec_row(2)["spec_hash"], {"accuracy": 0.1})


# --- artifacts, baselines, effective robustness ------------------------------------------------------


def test_artifacts_first_record_wins(repo: Repository) -> None:
    assert repo.get_artifact("k1") is None
    assert repo.put_artifact("k1", "adv-set", "/artifacts/adv/k1.pt", {"images": 1000})
    assert not repo.put_artifact("k1", "adv-set", "/elsewhere.pt", {"images": 1})  # a replay changes nothing
    found = repo.get_artifact("k1")
    assert found is not None
    assert (found.kind, found.uri, found.meta) == ("adv-set", "/artifacts/adv/k1.pt", {"images": 1000})


def test_baseline_refit_from_the_same_testbed_replaces(repo: Repository) -> None:
    """One row per (ID, OOD, protocol, testbed): a refit from the same testbed replaces it in place;
    another testbed or another protocol is another row."""
    assert repo.get_baseline("cifar10", "cifar10.1") is None
    fit = {"id_dataset": "cifar10", "ood_dataset": "cifar10.1", "input_size": None, "protocol": {},
           "slope_ci_low": None, "slope_ci_high": None}
    first = repo.save_baseline(**fit, transform="logit", slope=0.8, intercept=-0.4, n_points=30, r=0.99,
                               fitted_from="experiment:smoke")
    second = repo.save_baseline(**fit, transform="probit", slope=0.9, intercept=-0.2, n_points=12, r=None,
                                fitted_from="experiment:smoke")
    assert first == second
    baseline = repo.get_baseline("cifar10", "cifar10.1")
    assert baseline is not None
    assert {k: getattr(baseline, k) for k in ("transform", "slope", "intercept", "n_points", "r", "fitted_from",
                                              "protocol_key")} == {
        "transform": "probit", "slope": 0.9, "intercept": -0.2, "n_points": 12, "r": None,
        "fitted_from": "experiment:smoke", "protocol_key": '{"input_size":null}'}
    assert baseline.created_at.tzinfo is not None
    other_testbed = repo.save_baseline(**fit, transform="logit", slope=0.7, intercept=0.0, n_points=9, r=0.9,
                                       fitted_from="csv:cifar101.csv")
    other_size = repo.save_baseline(**{**fit, "input_size": 16}, transform="logit", slope=0.7, intercept=0.0,
                                    n_points=9, r=0.9, fitted_from="experiment:smoke")
    assert len({first, other_testbed, other_size}) == 3
    assert one(repo.engine, "SELECT count(*) FROM er_baselines")[0] == 3
    latest = repo.get_baseline("cifar10", "cifar10.1", 16)
    assert latest is not None and latest.id == other_size


def test_er_backfill(repo: Repository) -> None:
    rows = [spec_row(i, source="scratch", ood="noise-2", dataset="digits") for i in range(2)]
    # retrain from a source: random init, the source only serves the ASR attack -> in the testbed
    rows.append(spec_row(2, method="retrain", source="torchvision:resnet18", ood="noise-2", dataset="digits"))
    rows.append(spec_row(99, dataset="digits", ood="noise-2"))  # fine-tuned: not in the testbed
    # random init but taught by a pre-trained model: not an ID-only model, not in the testbed
    rows.append(spec_row(98, method="renofeation", dataset="digits", ood="noise-2"))
    experiment_id, _ = planned(repo, "e", rows)
    for i, row in enumerate(rows):
        repo.mark_started(row["spec_hash"])
        repo.record_epoch(row["spec_hash"], 1, {"test_acc": 0.3 + 0.1 * i, "ood_acc": 0.2 + 0.1 * i})
        repo.record_epoch(row["spec_hash"], 2, {"test_acc": 0.4 + 0.1 * i, "ood_acc": None})
        repo.complete(row["spec_hash"], {"test_acc": 0.4 + 0.1 * i, "ood_acc": 0.25 + 0.1 * i})
    targets = repo.er_targets(experiment_id, "digits", "noise-2")
    epochs = [row for target in targets for row in target.epochs]
    assert len(epochs) == 5 and all(row.epoch == 1 for row in epochs)  # epoch 2 has no OOD accuracy
    assert len(targets) == 5 and all(t.test_acc is not None for t in targets)
    baseline = repo.save_baseline(id_dataset="digits", ood_dataset="noise-2", input_size=None, protocol={},
                                  transform="logit", slope=1.0, intercept=0.0, n_points=3, r=None,
                                  slope_ci_low=None, slope_ci_high=None, fitted_from="experiment:e")
    assert repo.set_er(baseline, [(row.trial_id, row.epoch, row.ood_acc - row.test_acc) for row in epochs],
                       [(t.trial_id, 0.05) for t in targets]) == (5, 5)
    assert [p[1:] for p in repo.testbed_points(experiment_id, "digits", "noise-2")] == [
        pytest.approx((0.4, 0.25)), pytest.approx((0.5, 0.35)), pytest.approx((0.6, 0.45))]
    stored = [row.er for row in repo.epoch_rows(experiment_id) if row.epoch == 1]
    assert stored == [pytest.approx(-0.1)] * 5
    assert {(row.er, row.er_baseline_id) for row in repo.trial_rows("e")} == {(0.05, baseline)}
    assert repo.er_targets(experiment_id, "digits", "blur-1") == [] and repo.set_er(baseline, [], []) == (0, 0)


# --- read-only engine ----------------------------------------------------------------------------------


def test_readonly_engine_refuses_writes(repo: Repository, db_backend: str) -> None:
    planned(repo, "e", [spec_row(1)])
    db_url = repo.engine.url.render_as_string(hide_password=False)
    readonly = open_readonly(db_url)
    try:
        with readonly.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM results")).scalar_one() == 1
        if db_backend == "sqlite":
            with pytest.raises(OperationalError, match="attempt to write a readonly database"):
                with readonly.begin() as connection:
                    connection.execute(text("DELETE FROM trials"))
            with pytest.raises(SQLDatabaseError, match="not authorized"):  # no writing other files either
                with readonly.connect() as connection:
                    connection.execute(text(f"ATTACH DATABASE '{db_url.removeprefix('sqlite:///')}-x' AS x"))
        else:
            with pytest.raises(SQLDatabaseError) as info:
                with readonly.begin() as connection:
                    connection.execute(text("DELETE FROM trials"))
            assert isinstance(info.value.orig, psycopg.errors.ReadOnlySqlTransaction)
            with pytest.raises(ProgrammingError, match="multiple commands"):  # no switching back to READ WRITE
                with readonly.begin() as connection:
                    connection.execute(text("SET TRANSACTION READ WRITE; DELETE FROM trials"))
    finally:
        readonly.dispose()
    assert repo.status_counts()["pending"] == 1


def test_readonly_of_missing_database(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'none.sqlite'}"
    with pytest.raises(DatabaseError, match="no rtgrid database at"):
        open_readonly(url)
    assert not (tmp_path / "none.sqlite").exists()


# --- SQLite: two writers --------------------------------------------------------------------------------


def test_sqlite_concurrent_writers_wait_instead_of_failing(tmp_path) -> None:
    """The driver records epochs while `rtgrid cancel` and `rtgrid status` run in other processes."""
    url = f"sqlite:///{tmp_path / 'busy.sqlite'}"
    setup = Repository(open_database(url, create=True))
    experiment_id, _ = planned(setup, "e", [spec_row(i) for i in range(20)])
    setup.close()
    errors: list[BaseException] = []

    def driver() -> None:
        repo = Repository(open_database(url, create=True))
        try:
            for i in range(20):
                spec_hash = spec_row(i)["spec_hash"]
                repo.mark_started(spec_hash)
                repo.record_epoch(spec_hash, 1, {"test_acc": 0.5})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            repo.close()

    def other() -> None:
        repo = Repository(open_database(url, create=False))
        try:
            for _ in range(20):
                repo.status_counts("e")
                repo.heartbeat([spec_row(i)["spec_hash"] for i in range(20)])
            repo.cancel_experiment(experiment_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            repo.close()

    threads = [threading.Thread(target=driver), threading.Thread(target=other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    check = Repository(open_database(url, create=False))
    assert len(check.epoch_rows("e")) == 20
    check.close()


# --- URLs ------------------------------------------------------------------------------------------------


def test_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTGRID_DB", raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///rtgrid.sqlite"
    monkeypatch.setenv("RTGRID_DB", "sqlite:///from-env.sqlite")
    assert resolve_url(None) == "sqlite:///from-env.sqlite"
    assert resolve_url("sqlite:///arg.sqlite") == "sqlite:///arg.sqlite"
    assert normalise_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg://u:p@h:5432/d"
    assert normalise_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert safe_url("postgresql+psycopg://rtgrid:hunter2@db:5432/rtgrid") == "postgresql+psycopg://rtgrid:***@db:5432/rtgrid"
    assert "hunter2" not in safe_url("not a url://rtgrid:hunter2@db")
    with pytest.raises(DatabaseError, match="invalid database URL"):
        open_database("not a url", create=False)
