"""Trainable reports -> database rows: one Tune report (a batch of events) is one transaction.

Only the driver writes (or, under Ray Client, the Tune loop on the head node), so one SQLite
file serves a whole cluster. Every write is keyed by spec_hash and idempotent: a replayed
report is harmless, and a completed trial is never downgraded nor its epochs rewritten.

A report is read whole before anything is written: an unknown event kind or a metric the schema
does not have (db.models.EPOCH_METRICS / FINAL_METRICS) raises ProtocolError and writes nothing,
because it means the workers and the driver run different code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, assert_never

from db.lifecycle import TrialWriter
from db.models import EPOCH_METRICS, ER_PROVENANCE, FINAL_METRICS, TrialStatus
from db.repository import Repository
from workers.trainable import (
    Checkpoint,
    Epoch,
    Event,
    Failed,
    Final,
    ProtocolError,
    Retrying,
    Started,
    events_of_report,
)

logger = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        logger.debug("a reported value that is not a number is not recorded: %r", value)
        return None
    return number if number == number else None  # NaN is not a result


def _values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metric values as numbers; the ER's baseline id as an integer."""
    values: dict[str, Any] = {name: _number(value) for name, value in metrics.items()}
    if values.get(ER_PROVENANCE) is not None:
        values[ER_PROVENANCE] = int(values[ER_PROVENANCE])
    return values


def _checked(event: Epoch | Final, allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(event.metrics) - set(allowed))
    if unknown:
        raise ProtocolError(f"{what} event of spec {event.spec_hash[:12]} has unknown metric(s) "
                            f"{', '.join(unknown)} (the schema's {what} metrics: {', '.join(allowed)})")


def parse_report(result: Mapping[str, Any]) -> list[Event]:
    """The typed events of one Tune report; ProtocolError for anything the schema cannot hold."""
    events = events_of_report(result)
    for event in events:
        if isinstance(event, Epoch):
            _checked(event, (*EPOCH_METRICS, ER_PROVENANCE), "epoch")
        elif isinstance(event, Final):
            _checked(event, (*FINAL_METRICS, ER_PROVENANCE), "final")
    return events


def record_report(repo: Repository, result: Mapping[str, Any], driver: str | None = None) -> set[str]:
    """Write one Tune report (a batch of events) in one transaction. Independent of Ray.

    With `driver`, only the trials that driver still holds are written; the spec hashes of those
    another driver took over are returned (nothing of them was written)."""
    try:
        events = parse_report(result)
    except ProtocolError as exc:
        logger.error("a worker's report cannot be recorded (nothing of it was written): %s", exc)
        raise
    if not events:
        return set()
    with repo.transaction(driver) as writer:
        for event in events:
            apply_event(writer, event)
    return writer.lost


def apply_event(writer: TrialWriter, event: Event) -> None:
    if isinstance(event, Started):
        writer.mark_started(event.spec_hash, worker=event.node or None)
    elif isinstance(event, Epoch):
        writer.record_epoch(event.spec_hash, event.epoch, _values(event.metrics))
    elif isinstance(event, Checkpoint):
        writer.set_checkpoint(event.spec_hash, event.uri)
    elif isinstance(event, Final):
        _final(writer, event)
    elif isinstance(event, Failed):
        # The one-line error is the trial's; the worker's short traceback goes to the driver's log.
        logger.warning("spec %s failed: %s", event.spec_hash[:12], event.error)
        if event.detail:
            logger.debug("spec %s traceback:\n%s", event.spec_hash[:12], event.detail)
        writer.fail(event.spec_hash, event.error or TrialStatus.FAILED.value)
    elif isinstance(event, Retrying):
        logger.info("spec %s raised, retrying from its last checkpoint: %s", event.spec_hash[:12], event.error)
        writer.heartbeat([event.spec_hash])
    else:
        assert_never(event)


def _final(writer: TrialWriter, event: Final) -> None:
    for artifact in event.artifacts:
        writer.put_artifact(artifact.key_hash, artifact.kind, artifact.uri, artifact.meta)
    final: dict[str, Any] = _values(event.metrics)
    final["duration_s"] = _number(event.duration_s)
    # A source keeps its model file; a transfer keeps none (its resume checkpoint is deleted).
    final["checkpoint_uri"] = event.checkpoint_path
    writer.complete(event.spec_hash, final)
