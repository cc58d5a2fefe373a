"""The driver <-> worker protocol: events survive the Tune report boundary, the recorder refuses
what the schema cannot hold (and writes nothing of such a report), and the test hooks are off
unless a test turns them on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from db.models import EPOCH_METRICS, KEY_COLUMNS, EpochMetric, Trial
from db.records import EpochRecord, TrialRecord
from db.repository import Repository
from orchestrator.plan.spec import TrialSpec
from orchestrator.run.recorder import record_report
from workers.trainable import (
    Checkpoint,
    Diagnostics,
    Epoch,
    Failed,
    Final,
    KillWorker,
    PackItem,
    PackRunner,
    ProducedArtifact,
    ProtocolError,
    Retrying,
    Started,
    WorkerSettings,
    batch_payload,
    event_from_payload,
    events_of_report,
)

HASH = "a" * 64
EVENTS = [
    Started(HASH, attempt=2, node="node-1", resume_epoch=3),
    Started(HASH, attempt=1),
    Epoch(HASH, 4, {"test_acc": 0.5, "ood_acc": None, "train_loss": 1.25}),
    Checkpoint(HASH, 4, "/artifacts/checkpoints/a.pt"),
    Retrying(HASH, "RuntimeError: CUDA hiccup"),
    Failed(HASH, "KernelInputError: no dataset", "Traceback …"),
    Final(HASH, 12.5, {"test_acc": 0.8, "asr": 0.25, "er": None},
          (ProducedArtifact("k1", "source_checkpoint", "/a/k1.pt", {"sha256": "f" * 64}),), "/a/k1.pt", "f" * 64),
    Final(HASH, 1.0),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip_through_payloads(event: Any) -> None:
    payload = event.to_payload()
    assert json.loads(json.dumps(payload)) == payload  # a plain dict: what Tune reports carry
    assert event_from_payload(payload) == event


def test_a_batch_round_trips_in_order_and_tune_keys_are_ignored() -> None:
    report = {**batch_payload([e.to_payload() for e in EVENTS]), "training_iteration": 3, "done": False}
    assert events_of_report(report) == EVENTS
    assert events_of_report({"training_iteration": 1, "done": True}) == []  # Tune's own bookkeeping


def test_unknown_event_kind_and_bare_events_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="unknown event kind 'progress'"):
        event_from_payload({"event": "progress", "spec_hash": HASH})
    with pytest.raises(ProtocolError, match="batch"):
        events_of_report(Started(HASH, 1).to_payload())
    with pytest.raises(ProtocolError, match="malformed epoch"):
        event_from_payload({"event": "epoch", "spec_hash": HASH})


def _planned_trial(repo: Repository) -> str:
    spec = {"kind": "transfer", "arch": "resnet50", "source": "scratch", "dataset": "cifar10", "ood": "cifar10.1",
            "method": "finetune", "blocks": 1, "subset_size": 100, "seed": 0, "epochs": 2}
    spec_json = json.dumps(spec, sort_keys=True)
    spec_hash = hashlib.sha256(spec_json.encode()).hexdigest()
    experiment_id = repo.ensure_experiment("e", "test-grid")
    repo.plan_trials(experiment_id, [{"spec_hash": spec_hash, "spec_json": spec_json,
                                      **{name: spec[name] for name in KEY_COLUMNS}, "init": "random"}])
    return spec_hash


def _report(*events: Any) -> dict[str, Any]:
    return batch_payload([e.to_payload() if hasattr(e, "to_payload") else e for e in events])


def test_recorder_writes_a_report_of_typed_events(repo: Repository) -> None:
    spec_hash = _planned_trial(repo)
    record_report(repo, _report(Started(spec_hash, 1, "node-1"), Epoch(spec_hash, 1, {"test_acc": 0.5}),
                                Final(spec_hash, 3.0, {"test_acc": 0.6, "asr": 0.1})))
    trial = repo.trial_by_hash(spec_hash)
    assert trial is not None
    assert (trial.status, trial.test_acc, trial.asr, trial.duration_s, trial.worker) == (
        "completed", 0.6, 0.1, 3.0, "node-1")
    assert [(row.epoch, row.test_acc) for row in repo.epoch_rows("e")] == [(1, 0.5)]


@pytest.mark.parametrize(("bad", "message"), [
    ({"event": "progress", "spec_hash": "HASH", "percent": 50}, "unknown event kind 'progress'"),
    ({"event": "epoch", "spec_hash": "HASH", "epoch": 1, "test_acc": 0.5, "top5_acc": 0.9},
     "unknown metric.*top5_acc"),
    ({"event": "final", "spec_hash": "HASH", "duration_s": 1.0, "test_acc": 0.5, "f1": 0.4}, "unknown metric.*f1"),
])
def test_recorder_rejects_what_the_schema_cannot_hold(repo: Repository, bad: dict[str, Any], message: str) -> None:
    """Loudly, and atomically: the good events of the same report are not written either."""
    spec_hash = _planned_trial(repo)
    bad = {key: spec_hash if value == "HASH" else value for key, value in bad.items()}
    with pytest.raises(ProtocolError, match=message):
        record_report(repo, _report(Started(spec_hash, 1, "node-1"), bad))
    trial = repo.trial_by_hash(spec_hash)
    assert trial is not None and trial.status == "pending" and trial.attempts == 0
    assert repo.epoch_rows("e") == []


def test_every_schema_metric_is_accepted(repo: Repository) -> None:
    spec_hash = _planned_trial(repo)
    record_report(repo, _report(Started(spec_hash, 1), Epoch(spec_hash, 1, dict.fromkeys(EPOCH_METRICS, 0.5))))
    assert [row.epoch for row in repo.epoch_rows("e")] == [1]


def test_records_name_every_column() -> None:
    """A record is built from a row by column name: the two must agree."""
    assert [f.name for f in dataclasses.fields(TrialRecord)] == [c.name for c in Trial.__table__.columns]
    epoch_fields = {f.name for f in dataclasses.fields(EpochRecord)}
    assert set(EPOCH_METRICS) | set(KEY_COLUMNS) <= epoch_fields
    assert set(EPOCH_METRICS) <= {c.name for c in EpochMetric.__table__.columns}


# --- test hooks ---------------------------------------------------------------------------------

MISSING = TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch", dataset="cifar10", method="retrain",
                    seed=0, epochs=1, params={"input_size": 16})


def test_worker_settings_have_no_diagnostics_by_default() -> None:
    assert WorkerSettings().diagnostics is None
    assert Diagnostics() == Diagnostics(kernel_override=None, kill_worker=None, kernel_starts_log=None)
    with pytest.raises(ValueError, match="unknown kernel override"):
        Diagnostics(kernel_override="fast")  # type: ignore[arg-type]


def test_diagnostics_travel_as_json() -> None:
    diagnostics = Diagnostics("noop", KillWorker(HASH, "/tmp/deaths", 2), "/tmp/starts.log")
    assert Diagnostics.from_json(diagnostics.to_json()) == diagnostics
    with pytest.raises(ValueError, match="unknown diagnostics field"):
        Diagnostics.from_json('{"kill_workers": null}')


def test_kernel_starts_are_logged_only_when_asked(tmp_path: Path) -> None:
    item = PackItem(spec_hash=MISSING.spec_hash, spec=MISSING.to_dict())
    plain = WorkerSettings(artifacts_dir=str(tmp_path / "art"), data_root=str(tmp_path))
    payloads: list[dict[str, Any]] = []
    PackRunner(plain, payloads.append).run([item])
    assert [type(e) for p in payloads for e in events_of_report(p)] == [Started, Failed]  # the kernel did start
    assert not list(tmp_path.rglob("kernel_starts.log"))

    log = tmp_path / "audit" / "kernel_starts.log"
    audited = dataclasses.replace(plain, diagnostics=Diagnostics(kernel_starts_log=str(log)))
    PackRunner(audited, lambda payload: None).run([item])
    assert [line.split("\t")[1:3] for line in log.read_text().splitlines()] == [[MISSING.spec_hash, "1"]]


def test_noop_override_runs_no_kernel(tmp_path: Path) -> None:
    spec = dataclasses.replace(MISSING, epochs=3)  # its dataset is absent: only the no-op kernel succeeds
    settings = WorkerSettings(artifacts_dir=str(tmp_path / "art"), data_root=str(tmp_path),
                              diagnostics=Diagnostics(kernel_override="noop"))
    payloads: list[dict[str, Any]] = []
    PackRunner(settings, payloads.append).run([PackItem(spec.spec_hash, spec.to_dict())])
    events = [e for p in payloads for e in events_of_report(p)]
    assert [type(e) for e in events] == [Started, Epoch, Final]
    assert isinstance(events[1], Epoch) and events[1].epoch == 3
