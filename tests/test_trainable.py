"""The pack runner inside the Tune trainable, driven directly (real kernels, no Ray needed):
per-spec events, per-spec failures, and resuming a crashed trial from its last checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.spec import TrialSpec
from workers.trainable import PackRunner

SPEC = TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch", dataset="digits", ood="noise-2",
                 method="retrain", subset_size=100, seed=3, epochs=4,
                 params={"input_size": 16, "batch_size": 32, "lr": 0.05, "eval_images": 100, "head_init": "default"})
MISSING = TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch", dataset="cifar10", method="retrain",
                    seed=0, epochs=1, params={"input_size": 16})


class Crash(BaseException):
    """Stands in for a lost worker (not an Exception: nothing in the trainable may catch it)."""


def _events(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trainable sends events in batches; unpack them in order."""
    return [event for payload in payloads for event in payload["events"]]


def _item(spec: TrialSpec) -> dict[str, Any]:
    return {"spec_hash": spec.spec_hash, "spec": spec.to_dict()}


def _settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"artifacts_dir": str(tmp_path / "art"), "data_root": str(tmp_path), "max_retries": 1, **extra}


def test_pack_reports_each_spec_and_isolates_failures(tmp_path: Path) -> None:
    payloads: list[dict[str, Any]] = []
    PackRunner(_settings(tmp_path), lambda payload, _dir: payloads.append(payload), None).run(
        [_item(MISSING), _item(SPEC)])
    events = _events(payloads)
    by_spec = {h: [e["event"] for e in events if e["spec_hash"] == h] for h in (MISSING.spec_hash, SPEC.spec_hash)}
    # Bad input fails once (no retry: it would fail the same way), the next spec still runs.
    assert by_spec[MISSING.spec_hash] == ["started", "failed"]
    assert by_spec[SPEC.spec_hash] == ["started", "epoch", "epoch", "epoch", "epoch", "final"]
    failed = next(e for e in events if e["event"] == "failed")
    assert "cifar10" in failed["error"] and "\n" not in failed["error"]
    final = next(e for e in events if e["event"] == "final")
    assert 0 <= final["test_acc"] <= 1 and final["duration_s"] > 0


def test_crashed_trial_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    uninterrupted: list[dict[str, Any]] = []
    PackRunner(_settings(tmp_path), lambda p, _d: uninterrupted.append(p), None).run([_item(SPEC)])

    saved = tmp_path / "saved"
    first: list[dict[str, Any]] = []

    def emit_then_crash(payload: dict[str, Any], checkpoint_dir: str | None) -> None:
        first.append(payload)
        epochs = [e.get("epoch") for e in payload["events"] if e["event"] == "checkpoint"]
        if checkpoint_dir is not None and epochs == [2]:
            shutil.copytree(checkpoint_dir, saved)  # what Tune would persist
            raise Crash("worker lost")

    runner = PackRunner(_settings(tmp_path, checkpoint_interval_s=0, max_retries=0), emit_then_crash, None)
    with pytest.raises(Crash):
        runner.run([_item(SPEC)])

    progress = json.loads((saved / "progress.json").read_text())
    progress["state"] = torch.load(saved / "state.pt", weights_only=True)
    assert progress["current"] == SPEC.spec_hash
    resumed: list[dict[str, Any]] = []
    PackRunner(_settings(tmp_path), lambda p, _d: resumed.append(p), progress).run([_item(SPEC)])

    epochs = [e["epoch"] for e in _events(resumed) if e["event"] == "epoch"]
    assert epochs == [3, 4]  # epochs 1-2 are not trained again
    final_resumed = next(e for e in _events(resumed) if e["event"] == "final")
    final_plain = next(e for e in _events(uninterrupted) if e["event"] == "final")
    assert final_resumed["test_acc"] == final_plain["test_acc"]
    assert final_resumed["ood_acc"] == final_plain["ood_acc"]
