"""Tune callback on the driver: every report becomes database rows, in one transaction each.

Only the driver writes, so one SQLite file serves a whole cluster. Every write is keyed
by spec_hash and idempotent: a replayed report (a retried Tune trial) is harmless, and a
completed trial is never downgraded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from db.repository import Repository

EPOCH_FIELDS = ("train_loss", "train_acc", "test_acc", "ood_acc", "er", "lr", "seconds", "robust_acc")
FINAL_FIELDS = ("test_acc", "ood_acc", "asr", "adv_acc", "clean_acc", "er", "robust_acc", "duration_s")

Progress = Callable[[str, str], None]  # (event, spec_hash)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is not a result


class ReportRecorder:
    """Turns trainable reports into repository writes. Independent of Ray (unit-testable)."""

    def __init__(self, repo: Repository, checkpoint_uri: Callable[[str, Mapping[str, Any]], str | None] | None = None,
                 progress: Progress | None = None) -> None:
        self.repo = repo
        self.checkpoint_uri = checkpoint_uri
        self.progress = progress
        self.finished: set[str] = set()
        self.failed: dict[str, str] = {}

    def handle(self, result: Mapping[str, Any]) -> None:
        if result.get("event") == "batch":
            for event in result.get("events") or []:
                self.handle(event)
            return
        event = result.get("event")
        spec_hash = result.get("spec_hash")
        if not event or not spec_hash:
            return
        if event == "started":
            self.repo.mark_started(spec_hash, worker=str(result.get("node") or "") or None)
        elif event == "epoch":
            metrics = {name: _number(result.get(name)) for name in EPOCH_FIELDS}
            self.repo.record_epoch(spec_hash, int(result["epoch"]), metrics)
        elif event == "final":
            self._final(spec_hash, result)
        elif event == "failed":
            self.failed[spec_hash] = str(result.get("error") or "failed")
            self.repo.fail(spec_hash, self.failed[spec_hash])
            self.finished.add(spec_hash)
        elif event in ("retrying", "checkpoint", "progress"):
            self.repo.heartbeat([spec_hash])
        if self.progress is not None:
            self.progress(event, spec_hash)

    def _final(self, spec_hash: str, result: Mapping[str, Any]) -> None:
        final: dict[str, Any] = {name: _number(result.get(name)) for name in FINAL_FIELDS}
        artifacts = json.loads(result.get("artifacts_json") or "[]")
        for artifact in artifacts:
            self.repo.put_artifact(artifact["key_hash"], artifact["kind"], artifact["uri"], artifact.get("meta") or {})
        uri = result.get("checkpoint_path")
        if uri and self.checkpoint_uri is not None:
            uri = self.checkpoint_uri(spec_hash, result) or uri
        final["checkpoint_uri"] = uri
        self.repo.complete(spec_hash, final)
        self.finished.add(spec_hash)

    def fail_unfinished(self, spec_hashes: list[str], error: str) -> list[str]:
        """A Tune trial died for good: its specs that never ended are failed with its error."""
        left = [h for h in spec_hashes if h not in self.finished]
        for spec_hash in left:
            self.repo.fail(spec_hash, error)
            self.finished.add(spec_hash)
            if self.progress is not None:
                self.progress("failed", spec_hash)
        return left


def trial_error(trial: Any) -> str:
    """The last line of the Tune trial's error (worker crash, OOM, node loss)."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path:
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            text = ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "Tune trial failed (worker lost or crashed)"
