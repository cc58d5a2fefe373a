"""The pack runner inside the Tune trainable, driven directly (real kernels, no Ray needed):
per-spec events, per-spec failures, and resuming from the spec's last checkpoint, both after a
lost worker (a new runner) and after an exception (an in-process retry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.plan.spec import TrialSpec
from workers.trainable import PackItem, PackRunner, WorkerSettings, resume_checkpoint_path

SPEC = TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch", dataset="digits", ood="noise-2",
                 method="retrain", subset_size=100, seed=3, epochs=4,
                 params={"input_size": 16, "batch_size": 32, "lr": 0.05, "eval_images": 100, "head_init": "default"})
MISSING = TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch", dataset="cifar10", method="retrain",
                    seed=0, epochs=1, params={"input_size": 16})


class Crash(BaseException):
    """Stands in for a lost worker (not an Exception: nothing in the trainable may catch it)."""


class TransientError(RuntimeError):
    """An ordinary failure inside the kernel (e.g. a CUDA hiccup): retried in-process."""


def _events(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trainable sends events in batches; unpack them in order."""
    return [event for payload in payloads for event in payload["events"]]


def _item(spec: TrialSpec) -> PackItem:
    return PackItem(spec_hash=spec.spec_hash, spec=spec.to_dict())


def _settings(tmp_path: Path, **extra: Any) -> WorkerSettings:
    return WorkerSettings(**{"artifacts_dir": str(tmp_path / "art"), "data_root": str(tmp_path), "max_retries": 1,
                             **extra})


def _epochs(events: list[dict[str, Any]]) -> list[int]:
    return [e["epoch"] for e in events if e["event"] == "epoch"]


def _final(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["event"] == "final")


def test_pack_reports_each_spec_and_isolates_failures(tmp_path: Path) -> None:
    payloads: list[dict[str, Any]] = []
    PackRunner(_settings(tmp_path), payloads.append).run([_item(MISSING), _item(SPEC)])
    events = _events(payloads)
    by_spec = {h: [e["event"] for e in events if e["spec_hash"] == h] for h in (MISSING.spec_hash, SPEC.spec_hash)}
    # Bad input fails once (no retry: it would fail the same way), the next spec still runs.
    assert by_spec[MISSING.spec_hash] == ["started", "failed"]
    assert by_spec[SPEC.spec_hash] == ["started", "epoch", "epoch", "epoch", "epoch", "final"]
    failed = next(e for e in events if e["event"] == "failed")
    assert "cifar10" in failed["error"] and "\n" not in failed["error"]
    final = _final(events)
    assert 0 <= final["test_acc"] <= 1 and final["duration_s"] > 0


def test_lost_worker_resumes_from_the_specs_checkpoint(tmp_path: Path) -> None:
    uninterrupted: list[dict[str, Any]] = []
    PackRunner(_settings(tmp_path / "a"), uninterrupted.append).run([_item(SPEC)])

    first: list[dict[str, Any]] = []

    def emit_then_crash(payload: dict[str, Any]) -> None:
        first.append(payload)
        if any(e["event"] == "checkpoint" and e["epoch"] == 2 for e in payload["events"]):
            raise Crash("worker lost")

    settings = _settings(tmp_path / "b", checkpoint_interval_s=0, max_retries=0)
    with pytest.raises(Crash):
        PackRunner(settings, emit_then_crash).run([_item(SPEC)])
    checkpoint = resume_checkpoint_path(settings.artifacts_dir, SPEC.spec_hash)
    assert checkpoint.is_file()
    assert _epochs(_events(first)) == [1, 2]

    resumed: list[dict[str, Any]] = []
    PackRunner(settings, resumed.append).run([_item(SPEC)])
    events = _events(resumed)
    assert next(e for e in events if e["event"] == "started")["resume_epoch"] == 2
    assert _epochs(events) == [3, 4], "the resumed run repeated epochs it had checkpointed"
    # Deterministic on CPU: resuming gives exactly the uninterrupted result.
    assert _final(events)["test_acc"] == _final(_events(uninterrupted))["test_acc"]
    assert not checkpoint.exists(), "the resume checkpoint outlived the recorded result"


def test_in_process_retry_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    payloads: list[dict[str, Any]] = []
    failed_once = False

    def emit(payload: dict[str, Any]) -> None:
        nonlocal failed_once
        payloads.append(payload)
        if not failed_once and any(e["event"] == "epoch" and e["epoch"] == 3 for e in payload["events"]):
            failed_once = True
            raise TransientError("transient failure at epoch 3")  # raised inside the kernel's report()

    settings = _settings(tmp_path, checkpoint_interval_s=0, flush_interval_s=0, max_retries=1)
    PackRunner(settings, emit).run([_item(SPEC)])
    events = _events(payloads)
    kinds = [e["event"] for e in events if e["event"] in ("started", "retrying", "final")]
    assert kinds == ["started", "retrying", "started", "final"]
    second_start = [e for e in events if e["event"] == "started"][1]
    assert second_start["attempt"] == 2 and second_start["resume_epoch"] == 2
    assert _epochs(events) == [1, 2, 3, 3, 4], "the retry started again from epoch 1"


def test_runner_outside_ray_does_not_start_ray(tmp_path: Path) -> None:
    import ray

    PackRunner(_settings(tmp_path), lambda payload: None).run([_item(MISSING)])
    assert not ray.is_initialized()
