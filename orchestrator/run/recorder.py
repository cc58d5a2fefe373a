"""Trainable reports -> database rows: one Tune report (a batch of events) is one transaction.

Only the driver writes (or, under Ray Client, the Tune loop on the head node), so one SQLite
file serves a whole cluster. Every write is keyed by spec_hash and idempotent: a replayed
report is harmless, and a completed trial is never downgraded nor its epochs rewritten.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from db.lifecycle import TrialWriter
from db.repository import Repository

logger = logging.getLogger(__name__)

EPOCH_FIELDS = ("train_loss", "train_acc", "test_acc", "ood_acc", "er", "lr", "seconds", "robust_acc")
FINAL_FIELDS = ("test_acc", "ood_acc", "asr", "adv_acc", "clean_acc", "er", "robust_acc", "duration_s")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        logger.debug("a reported value that is not a number is not recorded: %r", value)
        return None
    return number if number == number else None  # NaN is not a result


def events_of(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The events a Tune report carries (the trainable sends them in batches)."""
    if result.get("event") == "batch":
        return list(result.get("events") or [])
    return [result] if result.get("event") else []


def record_report(repo: Repository, result: Mapping[str, Any]) -> None:
    """Write one Tune report (a batch of events) in one transaction. Independent of Ray."""
    events = [e for e in events_of(result) if e.get("spec_hash")]
    if not events:
        return
    with repo.transaction() as writer:
        for event in events:
            apply_event(writer, event)


def apply_event(writer: TrialWriter, event: Mapping[str, Any]) -> None:
    kind, spec_hash = event["event"], str(event["spec_hash"])
    if kind == "started":
        writer.mark_started(spec_hash, worker=str(event.get("node") or "") or None)
    elif kind == "epoch":
        writer.record_epoch(spec_hash, int(event["epoch"]), {name: _number(event.get(name)) for name in EPOCH_FIELDS})
    elif kind == "checkpoint":
        writer.set_checkpoint(spec_hash, str(event["uri"]))
    elif kind == "final":
        _final(writer, spec_hash, event)
    elif kind == "failed":
        writer.fail(spec_hash, str(event.get("error") or "failed"))
    elif kind == "retrying":
        writer.heartbeat([spec_hash])


def _final(writer: TrialWriter, spec_hash: str, event: Mapping[str, Any]) -> None:
    final: dict[str, Any] = {name: _number(event.get(name)) for name in FINAL_FIELDS}
    for artifact in json.loads(event.get("artifacts_json") or "[]"):
        writer.put_artifact(artifact["key_hash"], artifact["kind"], artifact["uri"], artifact.get("meta") or {})
    # A source keeps its model file; a transfer keeps none (its resume checkpoint is deleted).
    final["checkpoint_uri"] = event.get("checkpoint_path") or None
    writer.complete(spec_hash, final)
