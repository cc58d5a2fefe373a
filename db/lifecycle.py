"""Trial lifecycle writes on one open transaction: a whole Tune report lands atomically.

`Repository.transaction()` hands out a `TrialWriter`; the recorder applies every event of a
report through it and the report commits (or rolls back) as one unit. Every write is keyed by
spec_hash and idempotent, and a completed trial is immutable: neither its row nor its
epoch rows change again, so a replayed or duplicated run cannot overwrite a recorded result.

Writes are fenced by the claim: a writer made for a driver changes only the trials that driver
still holds (`claimed_by` in every UPDATE's WHERE). A driver whose claim another driver took
over writes nothing more for that trial, and the writer lists it in `lost`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Table, case, func, select, true, update

from db.models import (
    EPOCH_METRICS,
    ER_PROVENANCE,
    FINAL_METRICS,
    STARTABLE,
    Artifact,
    Base,
    EpochMetric,
    Trial,
    TrialStatus,
    status_values,
)


def table_of(model: type[Base]) -> Table:
    """A mapped class's Table (typed as such: the ORM declares only a FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


TRIALS = table_of(Trial)
EPOCHS = table_of(EpochMetric)
ARTIFACTS = table_of(Artifact)

COMPLETE_FIELDS = frozenset({*FINAL_METRICS, ER_PROVENANCE, "duration_s", "checkpoint_uri", "worker"})
EPOCH_FIELDS: tuple[str, ...] = (*EPOCH_METRICS, ER_PROVENANCE)
CHUNK = 1000  # rows per statement / IN list: well under both backends' bound-parameter limits


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they are UTC, say so."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class _TrialState(NamedTuple):
    id: int
    status: str
    started_at: datetime | None
    claimed_by: str | None


class TrialWriter:
    """The recorder's writes, all on `connection` (the caller commits)."""

    def __init__(self, connection: Connection, insert: Callable[[Any], Any], driver: str | None = None) -> None:
        self.connection = connection
        self._insert = insert  # the dialect's INSERT (with ON CONFLICT)
        self.driver = driver  # None: unfenced (tests, `rtgrid` maintenance); else only this driver's claims
        self.lost: set[str] = set()  # trials whose claim another driver holds now: nothing was written

    def _mine(self) -> Any:
        """The fence: WHERE the trial is still claimed by this writer's driver (no-op when unfenced)."""
        return TRIALS.c.claimed_by == self.driver if self.driver is not None else true()

    def _held_elsewhere(self, spec_hash: str, claimed_by: str | None) -> bool:
        if self.driver is None or claimed_by == self.driver:
            return False
        self.lost.add(spec_hash)
        return True

    def _check_fence(self, spec_hash: str) -> None:
        """After a fenced write changed nothing: note the trial as lost if another driver holds it."""
        if self.driver is not None:
            holder = self.connection.execute(
                select(TRIALS.c.claimed_by).where(TRIALS.c.spec_hash == spec_hash)).scalar_one_or_none()
            self._held_elsewhere(spec_hash, holder)

    def _trial(self, spec_hash: str) -> _TrialState:
        row = self.connection.execute(
            select(TRIALS.c.id, TRIALS.c.status, TRIALS.c.started_at, TRIALS.c.claimed_by)
            .where(TRIALS.c.spec_hash == spec_hash)
        ).one_or_none()
        if row is None:
            raise LookupError(f"no trial with spec_hash {spec_hash}")
        return _TrialState(*row)

    def mark_started(self, spec_hash: str, worker: str | None = None) -> bool:
        """pending/failed/running -> running (attempts + 1). Completed and cancelled stay put."""
        now = utc_now()
        values: dict[str, Any] = {"status": TrialStatus.RUNNING.value, "attempts": TRIALS.c.attempts + 1,
                                  "started_at": now, "heartbeat_at": now, "finished_at": None, "error": None}
        if worker:
            values["worker"] = worker
        stmt = (
            update(TRIALS)
            .where(TRIALS.c.spec_hash == spec_hash, TRIALS.c.status.in_(status_values(STARTABLE)), self._mine())
            .values(**values)
        )
        return self._changed(spec_hash, self.connection.execute(stmt).rowcount)

    def _changed(self, spec_hash: str, rowcount: int) -> bool:
        if rowcount > 0:
            return True
        self._check_fence(spec_hash)
        return False

    def record_epoch(self, spec_hash: str, epoch: int, metrics: Mapping[str, float | None]) -> bool:
        """Upsert the (trial, epoch) row and bump the heartbeat. False (nothing written) when the
        trial is completed. A metric given as None does not erase a stored value."""
        unknown = set(metrics) - set(EPOCH_FIELDS)
        if unknown:
            raise ValueError(f"unknown epoch metric(s): {', '.join(sorted(unknown))}")
        trial = self._trial(spec_hash)
        if self._held_elsewhere(spec_hash, trial.claimed_by) or trial.status == TrialStatus.COMPLETED:
            return False
        now = utc_now()
        # The trial's row first: its lock (PostgreSQL) keeps a claimer out until this report commits.
        beat = update(TRIALS).where(TRIALS.c.id == trial.id, self._mine()).values(heartbeat_at=now)
        if not self._changed(spec_hash, self.connection.execute(beat).rowcount):
            return False
        values = {"trial_id": trial.id, "epoch": int(epoch), "recorded_at": now,
                  **{name: metrics.get(name) for name in EPOCH_FIELDS}}
        stmt = self._insert(EPOCHS).values(values)
        changes = {name: func.coalesce(stmt.excluded[name], EPOCHS.c[name]) for name in metrics}
        changes["recorded_at"] = stmt.excluded.recorded_at
        self.connection.execute(stmt.on_conflict_do_update(index_elements=["trial_id", "epoch"], set_=changes))
        return True

    def set_checkpoint(self, spec_hash: str, uri: str) -> bool:
        """Where an unfinished trial's resume state lies (and the trial is alive)."""
        stmt = (
            update(TRIALS)
            .where(TRIALS.c.spec_hash == spec_hash, TRIALS.c.status != TrialStatus.COMPLETED.value, self._mine())
            .values(checkpoint_uri=uri, heartbeat_at=utc_now())
        )
        return self._changed(spec_hash, self.connection.execute(stmt).rowcount)

    def complete(self, spec_hash: str, final: Mapping[str, Any]) -> bool:
        """Final metrics + completed + finished_at + duration. A no-op when already completed.

        `final` keys: the final metrics (FINAL_METRICS), duration_s (default: now - started_at),
        checkpoint_uri, worker. None leaves a metric as it is; checkpoint_uri is always written
        (None clears the resume checkpoint of a transfer that keeps no model).
        """
        unknown = set(final) - COMPLETE_FIELDS
        if unknown:
            raise ValueError(f"unknown final field(s): {', '.join(sorted(unknown))}")
        trial = self._trial(spec_hash)
        if self._held_elsewhere(spec_hash, trial.claimed_by) or trial.status == TrialStatus.COMPLETED:
            return False
        now = utc_now()
        values = {name: value for name, value in final.items() if value is not None}
        values["checkpoint_uri"] = final.get("checkpoint_uri")
        if values.get("duration_s") is None and trial.started_at is not None:
            started = aware(trial.started_at)
            assert started is not None
            values["duration_s"] = max(0.0, (now - started).total_seconds())
        stmt = (
            update(TRIALS)
            .where(TRIALS.c.id == trial.id, TRIALS.c.status != TrialStatus.COMPLETED.value, self._mine())
            .values(status=TrialStatus.COMPLETED.value, finished_at=now, heartbeat_at=now, error=None, **values)
        )
        return self._changed(spec_hash, self.connection.execute(stmt).rowcount)

    def fail(self, spec_hash: str, error: str) -> bool:
        """Record a failure. A completed trial is untouched; a cancelled one keeps its status."""
        stmt = (
            update(TRIALS)
            .where(TRIALS.c.spec_hash == spec_hash, TRIALS.c.status != TrialStatus.COMPLETED.value, self._mine())
            .values(status=case((TRIALS.c.status == TrialStatus.CANCELLED.value, TrialStatus.CANCELLED.value),
                                 else_=TrialStatus.FAILED.value),
                    error=str(error)[:20_000], finished_at=utc_now())
        )
        return self._changed(spec_hash, self.connection.execute(stmt).rowcount)

    def heartbeat(self, spec_hashes: Sequence[str]) -> int:
        """These trials are still running."""
        now = utc_now()
        count = 0
        for chunk in chunks(list(spec_hashes)):
            stmt = (
                update(TRIALS)
                .where(TRIALS.c.spec_hash.in_(chunk), TRIALS.c.status == TrialStatus.RUNNING.value, self._mine())
                .values(heartbeat_at=now)
            )
            count += self.connection.execute(stmt).rowcount
        return count

    def put_artifact(self, key_hash: str, kind: str, uri: str, meta: Mapping[str, Any] | None = None) -> bool:
        """Record a shared artifact; the first record of a key wins. True when inserted."""
        stmt = self._insert(ARTIFACTS).values(
            key_hash=key_hash, kind=kind, uri=uri, meta_json=json.dumps(dict(meta or {}), sort_keys=True),
            created_at=utc_now(),
        )
        stmt = stmt.on_conflict_do_nothing(index_elements=["key_hash"]).returning(ARTIFACTS.c.id)
        return self.connection.execute(stmt).first() is not None
