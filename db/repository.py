"""Idempotent writes keyed by spec_hash, and the queries the CLI and reports need.

Every write is safe to replay (a re-sent report changes nothing), and a completed trial is
never downgraded: its status, metrics and timestamps stay as first recorded. Bulk work uses
SQLAlchemy Core with the dialect's INSERT … ON CONFLICT, in one transaction. On SQLite each
write transaction starts with BEGIN IMMEDIATE, so two writers (the driver and `rtgrid cancel`)
queue on the busy timeout instead of failing on a read-to-write lock upgrade.

This module must not import orchestrator (the dependency points cli -> orchestrator -> db).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, RowMapping, and_, bindparam, delete, func, literal, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from db.lifecycle import TrialWriter, aware, chunks, table_of, utc_now
from db.models import (
    ACTIVE,
    DERIVED_COLUMNS,
    EPOCH_METRICS,
    KEY_COLUMNS,
    RETRYABLE,
    RUNNABLE,
    STATUSES,
    Artifact,
    EpochMetric,
    ErBaseline,
    Experiment,
    ExperimentTrial,
    Trial,
    TrialInit,
    TrialStatus,
    protocol_key,
    status_values,
)
from db.records import (
    ArtifactRecord,
    BaselineRecord,
    ClaimHolder,
    ClaimOwner,
    EpochAccuracy,
    EpochRecord,
    ErTarget,
    ExperimentRecord,
    TrialRecord,
)

TRIALS = table_of(Trial)
EXPERIMENTS = table_of(Experiment)
LINKS = table_of(ExperimentTrial)
EPOCHS = table_of(EpochMetric)
ARTIFACTS = table_of(Artifact)
BASELINES = table_of(ErBaseline)

class GridConflict(Exception):
    """A grid was planned into an experiment that was created from another grid."""


@dataclass(frozen=True)
class DeleteResult:
    """What deleting an experiment did."""

    deleted: int  # trials only this experiment linked: removed with their epochs
    kept_shared: int  # trials another experiment also links: kept


@dataclass(frozen=True)
class PlanResult:
    """What planning a grid into an experiment did (counts of distinct specs)."""

    new: int  # inserted as pending
    already_completed: int  # existed and completed (in any experiment): linked, not run again
    already_pending: int  # existed with another status (pending/running/failed/cancelled)
    linked: int  # links to the experiment created by this call
    total: int  # distinct specs given


class RunnableTrial(NamedTuple):
    trial_id: int
    spec_hash: str
    spec_json: str
    status: str


@dataclass(frozen=True)
class Throughput:
    completed: int  # trials completed in the window
    window_s: float  # the window the rate is taken over (shorter when the work started later)
    mean_duration_s: float | None  # mean duration of those trials

    @property
    def per_hour(self) -> float:
        return self.completed * 3600.0 / self.window_s if self.window_s > 0 else 0.0




class TrialProgress(NamedTuple):
    """What `rtgrid status` shows of one trial."""

    spec_hash: str
    spec_json: str
    status: str
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    last_epoch: int | None  # the latest recorded evaluation epoch


def _values(row: RowMapping) -> dict[str, Any]:
    """A row's columns by name, timestamps made timezone-aware."""
    return {key: aware(value) if isinstance(value, datetime) else value for key, value in row.items()}



class Repository:
    """All reads and writes of the rtgrid tables. `engine` comes from db.session.open_database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {self.dialect!r}")

    def close(self) -> None:
        self.engine.dispose()

    # --- plumbing -----------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.commit()
            except BaseException:
                connection.rollback()
                raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            yield connection

    @staticmethod
    def _trial_id(connection: Connection, spec_hash: str) -> int:
        trial_id = connection.execute(select(TRIALS.c.id).where(TRIALS.c.spec_hash == spec_hash)).scalar_one_or_none()
        if trial_id is None:
            raise LookupError(f"no trial with spec_hash {spec_hash}")
        return int(trial_id)

    def _experiment_filter(self, experiment: str | int | None) -> Any:
        """WHERE clause: the trials linked to an experiment (by name or id); None = all trials."""
        if experiment is None:
            return true()
        links = select(LINKS.c.trial_id)
        if isinstance(experiment, str):
            links = links.join(EXPERIMENTS, EXPERIMENTS.c.id == LINKS.c.experiment_id).where(
                EXPERIMENTS.c.name == experiment
            )
        else:
            links = links.where(LINKS.c.experiment_id == experiment)
        return TRIALS.c.id.in_(links)

    # --- experiments and planning -------------------------------------------------------------

    def ensure_experiment(self, name: str, grid: str, grid_json: str | None = None, notes: str | None = None) -> int:
        """The experiment's id; created on first use. An existing experiment keeps its first grid."""
        with self._write() as connection:
            return self._ensure_experiment(connection, name, grid, grid_json, notes)

    def _ensure_experiment(self, connection: Connection, name: str, grid: str, grid_json: str | None,
                           notes: str | None = None) -> int:
        stmt = self._insert(EXPERIMENTS).values(name=name, grid=grid, grid_json=grid_json, notes=notes,
                                                created_at=utc_now())
        connection.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        return int(connection.execute(select(EXPERIMENTS.c.id).where(EXPERIMENTS.c.name == name)).scalar_one())

    def plan_experiment(self, name: str, grid: str, grid_json: str | None, rows: Sequence[Mapping[str, Any]],
                        *, same_grid_only: bool = True) -> tuple[int, PlanResult]:
        """Create the experiment (if new) and plan its trials in ONE transaction: a plan that fails
        leaves no trace. With `same_grid_only`, an experiment created from another grid is refused
        (GridConflict) rather than silently mixing two grids under one name."""
        with self._write() as connection:
            existing = connection.execute(
                select(EXPERIMENTS.c.grid).where(EXPERIMENTS.c.name == name)).scalar_one_or_none()
            if same_grid_only and existing is not None and existing != grid:
                raise GridConflict(f"experiment {name!r} holds grid {existing!r}, not {grid!r}: "
                                 "give another --experiment name")
            experiment_id = self._ensure_experiment(connection, name, grid, grid_json)
            return experiment_id, self._plan_trials(connection, experiment_id, rows)

    def experiment_id(self, name: str) -> int | None:
        with self._read() as connection:
            return connection.execute(select(EXPERIMENTS.c.id).where(EXPERIMENTS.c.name == name)).scalar_one_or_none()

    def list_experiments(self) -> list[str]:
        """Experiment names, oldest first."""
        with self._read() as connection:
            return list(connection.execute(select(EXPERIMENTS.c.name).order_by(EXPERIMENTS.c.id)).scalars())

    def experiment_info(self, name: str) -> ExperimentRecord | None:
        with self._read() as connection:
            row = connection.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.name == name)).one_or_none()
        return None if row is None else ExperimentRecord(**_values(row._mapping))

    def delete_experiment(self, experiment_id: int) -> DeleteResult:
        """Remove the experiment, its links, and the trials (with their epochs) no other experiment links.

        Trials another experiment also links are kept, whatever their status: they are that experiment's
        results too. One transaction. Refused (ValueError) while a trial of the experiment is running.
        """
        others = select(LINKS.c.trial_id).where(LINKS.c.experiment_id != experiment_id)
        mine = select(LINKS.c.trial_id).where(LINKS.c.experiment_id == experiment_id)
        with self._write() as connection:
            running = connection.execute(select(func.count()).select_from(TRIALS).where(
                TRIALS.c.id.in_(mine), TRIALS.c.status == TrialStatus.RUNNING.value)).scalar_one()
            if running:
                raise ValueError(f"{running} of its trials are {TrialStatus.RUNNING.value}")
            exclusive = [int(i) for i in connection.execute(
                select(TRIALS.c.id).where(TRIALS.c.id.in_(mine), TRIALS.c.id.not_in(others))).scalars()]
            shared = connection.execute(select(func.count()).select_from(TRIALS).where(
                TRIALS.c.id.in_(mine), TRIALS.c.id.in_(others))).scalar_one()
            connection.execute(delete(LINKS).where(LINKS.c.experiment_id == experiment_id))
            for chunk in chunks(exclusive):
                connection.execute(delete(EPOCHS).where(EPOCHS.c.trial_id.in_(chunk)))
                connection.execute(delete(TRIALS).where(TRIALS.c.id.in_(chunk)))
            connection.execute(delete(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id))
        return DeleteResult(deleted=len(exclusive), kept_shared=int(shared))

    def shared_trial_counts(self, experiment_id: int) -> dict[str, int]:
        """The experiment's trials by status that another experiment also links (kept by a delete)."""
        others = select(LINKS.c.trial_id).where(LINKS.c.experiment_id != experiment_id)
        return self._counts(and_(self._experiment_filter(experiment_id), TRIALS.c.id.in_(others)))

    def plan_trials(self, experiment_id: int, rows: Sequence[Mapping[str, Any]]) -> PlanResult:
        """Insert new specs as pending, link every spec to the experiment, count what existed.

        Each row: spec_hash, spec_json, the key columns (KEY_COLUMNS; a missing one is NULL) and the
        derived ones (DERIVED_COLUMNS, required: the planner's `trial_row` writes them). One transaction;
        bulk statements of CHUNK rows. Running it again inserts and links nothing.
        """
        with self._write() as connection:
            return self._plan_trials(connection, experiment_id, rows)

    def _plan_trials(self, connection: Connection, experiment_id: int, rows: Sequence[Mapping[str, Any]]
                     ) -> PlanResult:
        unique: dict[str, Mapping[str, Any]] = {}
        for row in rows:
            unique.setdefault(row["spec_hash"], row)
        now = utc_now()
        values = [
            {"spec_hash": spec_hash, "spec_json": row["spec_json"], "status": TrialStatus.PENDING.value, "attempts": 0,
             "created_at": now, **{name: row.get(name) for name in KEY_COLUMNS},
             **{name: row[name] for name in DERIVED_COLUMNS}}
            for spec_hash, row in unique.items()
        ]
        new = completed = other = linked = 0
        for chunk in chunks(values):
            hashes = [value["spec_hash"] for value in chunk]
            existing = dict(connection.execute(
                select(TRIALS.c.spec_hash, TRIALS.c.status).where(TRIALS.c.spec_hash.in_(hashes))
            ).all())
            completed += sum(1 for status in existing.values() if status == TrialStatus.COMPLETED)
            other += sum(1 for status in existing.values() if status != TrialStatus.COMPLETED)
            missing = [value for value in chunk if value["spec_hash"] not in existing]
            if missing:  # replanning a known grid inserts nothing: only the SELECT above runs
                insert = self._insert(TRIALS).on_conflict_do_nothing(index_elements=["spec_hash"])
                # rowcount, not RETURNING: a quarter of the client time for a big first plan.
                inserted = connection.execution_options(preserve_rowcount=True).execute(insert, missing).rowcount
                new += inserted
                other += len(missing) - inserted  # a concurrent planner got there first
            link = self._insert(LINKS).from_select(
                ["experiment_id", "trial_id"],
                select(literal(experiment_id), TRIALS.c.id).where(TRIALS.c.spec_hash.in_(hashes)),
            )
            # RETURNING: SQLAlchemy keeps rowcount for UPDATE/DELETE only.
            returned = connection.execute(link.on_conflict_do_nothing().returning(LINKS.c.trial_id))
            linked += len(returned.fetchall())
        return PlanResult(new=new, already_completed=completed, already_pending=other, linked=linked,
                          total=len(unique))

    def experiment_spec_jsons(self, experiment_id: int) -> list[str]:
        """Canonical spec JSON of every trial of the experiment, in insertion order."""
        query = (
            select(TRIALS.c.spec_json)
            .join(LINKS, LINKS.c.trial_id == TRIALS.c.id)
            .where(LINKS.c.experiment_id == experiment_id)
            .order_by(TRIALS.c.id)
        )
        with self._read() as connection:
            return list(connection.execute(query).scalars())

    def trials_to_run(self, experiment_id: int, stale_after_s: float,
                      statuses: Collection[str] = RUNNABLE) -> list[RunnableTrial]:
        """Trials of the experiment to (re)run: those in `statuses`, and running ones whose
        heartbeat is older than `stale_after_s` (their driver died). Cancelled trials run
        again only after reset_for_retry."""
        cutoff = utc_now() - timedelta(seconds=stale_after_s)
        heartbeat = TRIALS.c.heartbeat_at
        stale = and_(TRIALS.c.status == TrialStatus.RUNNING.value, or_(heartbeat.is_(None), heartbeat <= cutoff))
        query = (
            select(TRIALS.c.id, TRIALS.c.spec_hash, TRIALS.c.spec_json, TRIALS.c.status)
            .join(LINKS, LINKS.c.trial_id == TRIALS.c.id)
            .where(LINKS.c.experiment_id == experiment_id, or_(TRIALS.c.status.in_(status_values(statuses)), stale))
            .order_by(TRIALS.c.id)
        )
        with self._read() as connection:
            return [RunnableTrial(*row) for row in connection.execute(query)]

    # --- trial lifecycle (the recorder's writes) ----------------------------------------------

    @contextmanager
    def transaction(self, driver: str | None = None) -> Iterator[TrialWriter]:
        """One write transaction for several lifecycle writes (a whole Tune report). With `driver`,
        the writes are fenced: only the trials that driver still holds change (TrialWriter.lost)."""
        with self._write() as connection:
            yield TrialWriter(connection, self._insert, driver)

    def mark_started(self, spec_hash: str, worker: str | None = None) -> bool:
        with self.transaction() as writer:
            return writer.mark_started(spec_hash, worker)

    def record_epoch(self, spec_hash: str, epoch: int, metrics: Mapping[str, float | None]) -> bool:
        with self.transaction() as writer:
            return writer.record_epoch(spec_hash, epoch, metrics)

    def complete(self, spec_hash: str, final: Mapping[str, Any]) -> bool:
        with self.transaction() as writer:
            return writer.complete(spec_hash, final)

    def fail(self, spec_hash: str, error: str, driver: str | None = None) -> bool:
        with self.transaction(driver) as writer:
            return writer.fail(spec_hash, error)

    def heartbeat(self, spec_hashes: Sequence[str]) -> int:
        with self.transaction() as writer:
            return writer.heartbeat(spec_hashes)

    # --- claims: which live driver runs a trial -------------------------------------------------

    @staticmethod
    def _stale(stale_after_s: float) -> Any:
        cutoff = utc_now() - timedelta(seconds=stale_after_s)
        return or_(TRIALS.c.heartbeat_at.is_(None), TRIALS.c.heartbeat_at <= cutoff)

    def claim(self, driver: str | ClaimOwner, spec_hashes: Sequence[str], stale_after_s: float, *,
              dead: Collection[str] = (), live: Collection[str] = ()) -> list[str]:
        """Queue these trials for `driver` and return the ones it got, in one transaction.

        A trial can be claimed when it is pending or failed and no live driver holds it, or when
        it is `running` but its driver is gone: its heartbeat is older than `stale_after_s`, or its
        driver is in `dead` (a process on this host that no longer exists: taken at once). A driver
        in `live` (a process on this host that exists) keeps its claims whatever their heartbeat.
        A claimed trial is `pending` again until a worker starts it; the driver's heartbeat keeps
        the claim alive. Two drivers claiming at once get disjoint sets (conditional UPDATE), and
        the claim records the claiming process (`ClaimOwner`: host, pid, its start time).
        """
        owner = driver if isinstance(driver, ClaimOwner) else ClaimOwner(driver, "", 0, None)
        holder = TRIALS.c.claimed_by
        abandoned = or_(holder.in_(list(dead)),
                        and_(self._stale(stale_after_s), or_(holder.is_(None), holder.not_in(list(live)))))
        mine = holder == owner.driver
        claimable = or_(
            and_(TRIALS.c.status.in_(status_values(RUNNABLE)), or_(holder.is_(None), mine, abandoned)),
            and_(TRIALS.c.status == TrialStatus.RUNNING.value, or_(mine, abandoned)),
        )
        where = {"claim_host": owner.host or None, "claim_pid": owner.pid or None,
                 "claim_pid_start": owner.pid_start}
        got: list[str] = []
        with self._write() as connection:
            for chunk in chunks(list(spec_hashes)):
                stmt = (
                    update(TRIALS)
                    .where(TRIALS.c.spec_hash.in_(chunk), claimable)
                    .values(claimed_by=owner.driver, status=TrialStatus.PENDING.value, heartbeat_at=utc_now(),
                            **where)
                    .returning(TRIALS.c.spec_hash)
                )
                got += connection.execute(stmt).scalars().all()
        return got

    def claim_holders(self, spec_hashes: Sequence[str], driver: str | None = None) -> list[ClaimHolder]:
        """The drivers other than `driver` that hold any of these unfinished trials, with where they
        run, how many they hold and their freshest heartbeat."""
        holder = TRIALS.c.claimed_by
        found: dict[tuple[str, str | None, int | None, int | None], tuple[int, datetime | None]] = {}
        with self._read() as connection:
            for chunk in chunks(list(spec_hashes)):
                query = (
                    select(holder, TRIALS.c.claim_host, TRIALS.c.claim_pid, TRIALS.c.claim_pid_start,
                           func.count(), func.max(TRIALS.c.heartbeat_at))
                    .where(TRIALS.c.spec_hash.in_(chunk), holder.is_not(None), holder != (driver or ""),
                           TRIALS.c.status.in_(status_values(ACTIVE)))
                    .group_by(holder, TRIALS.c.claim_host, TRIALS.c.claim_pid, TRIALS.c.claim_pid_start)
                )
                for name, host, pid, start, count, beat in connection.execute(query):
                    if isinstance(beat, str):  # SQLite returns max() of a DATETIME column as text
                        beat = datetime.fromisoformat(beat)
                    key = (str(name), host, pid, start)
                    total, latest = found.get(key, (0, None))
                    beat = aware(beat)
                    newest = max((b for b in (latest, beat) if b is not None), default=None)
                    found[key] = (total + int(count), newest)
        return [ClaimHolder(name, host, pid, start, count, beat)
                for (name, host, pid, start), (count, beat) in found.items()]

    def held_by(self, driver: str, spec_hashes: Sequence[str]) -> set[str]:
        """Which of these trials `driver` still holds (another driver may have taken some over)."""
        held: set[str] = set()
        with self._read() as connection:
            for chunk in chunks(list(spec_hashes)):
                query = select(TRIALS.c.spec_hash).where(TRIALS.c.spec_hash.in_(chunk), TRIALS.c.claimed_by == driver)
                held.update(connection.execute(query).scalars())
        return held

    def heartbeat_claims(self, driver: str) -> int:
        """The driver is alive: its queued and running trials stay claimed."""
        stmt = (
            update(TRIALS)
            .where(TRIALS.c.claimed_by == driver, TRIALS.c.status.in_(status_values(ACTIVE)))
            .values(heartbeat_at=utc_now())
        )
        with self._write() as connection:
            return connection.execute(stmt).rowcount

    def claim_counts(self, driver: str) -> dict[str, int]:
        """The driver's claimed trials by status (for its progress bar)."""
        return self._counts(TRIALS.c.claimed_by == driver)

    def release_claims(self, driver: str, interrupted_error: str) -> int:
        """The driver is done: trials it left running failed with `interrupted_error` (they run
        again on resume), failed trials it queued but never started are failed again (still with
        their error: only a start clears it), and every claim of the driver is dropped. Returns
        the interrupted count."""
        with self._write() as connection:
            connection.execute(
                update(TRIALS)
                .where(TRIALS.c.claimed_by == driver, TRIALS.c.status == TrialStatus.PENDING.value,
                       TRIALS.c.error.is_not(None))
                .values(status=TrialStatus.FAILED.value)
            )
            interrupted = connection.execute(
                update(TRIALS)
                .where(TRIALS.c.claimed_by == driver, TRIALS.c.status == TrialStatus.RUNNING.value)
                .values(status=TrialStatus.FAILED.value, error=interrupted_error, finished_at=utc_now())
            ).rowcount
            connection.execute(update(TRIALS).where(TRIALS.c.claimed_by == driver).values(
                claimed_by=None, claim_host=None, claim_pid=None, claim_pid_start=None))
        return interrupted

    def statuses_of(self, spec_hashes: Sequence[str]) -> dict[str, str]:
        """spec_hash -> status for the given trials."""
        found: dict[str, str] = {}
        with self._read() as connection:
            for chunk in chunks(list(spec_hashes)):
                query = select(TRIALS.c.spec_hash, TRIALS.c.status).where(TRIALS.c.spec_hash.in_(chunk))
                found.update(dict(connection.execute(query).all()))
        return found

    def errors_of(self, spec_hashes: Sequence[str]) -> dict[str, str]:
        """spec_hash -> error of the given trials that are failed."""
        found: dict[str, str] = {}
        with self._read() as connection:
            for chunk in chunks(list(spec_hashes)):
                query = select(TRIALS.c.spec_hash, TRIALS.c.error).where(
                    TRIALS.c.spec_hash.in_(chunk), TRIALS.c.status == TrialStatus.FAILED.value)
                found.update({h: e or TrialStatus.FAILED.value for h, e in connection.execute(query)})
        return found

    def cancel_experiment(self, experiment_id: int) -> int:
        """pending/running -> cancelled for the experiment's trials (shared trials included)."""
        stmt = (
            update(TRIALS)
            .where(self._experiment_filter(experiment_id), TRIALS.c.status.in_(status_values(ACTIVE)))
            .values(status=TrialStatus.CANCELLED.value, finished_at=utc_now())
        )
        with self._write() as connection:
            return connection.execute(stmt).rowcount

    def reset_for_retry(self, experiment_id: int, statuses: Collection[str] = (TrialStatus.FAILED,)) -> int:
        """The experiment's trials in `statuses` -> pending. Completed trials are never reset."""
        bad = set(statuses) - RETRYABLE
        if bad:
            raise ValueError(f"cannot reset trials that are {', '.join(sorted(bad))}")
        stmt = (
            update(TRIALS)
            .where(self._experiment_filter(experiment_id), TRIALS.c.status.in_(status_values(statuses)))
            .values(status=TrialStatus.PENDING.value, error=None, started_at=None, finished_at=None, heartbeat_at=None)
        )
        with self._write() as connection:
            return connection.execute(stmt).rowcount

    # --- status -------------------------------------------------------------------------------

    def _counts(self, where: Any) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        query = select(TRIALS.c.status, func.count()).where(where).group_by(TRIALS.c.status)
        with self._read() as connection:
            for status, count in connection.execute(query):
                counts[status] = count
        return counts

    def status_counts(self, experiment: str | None = None) -> dict[str, int]:
        """Trials by status (every status present, 0 when none); one experiment or all trials."""
        return self._counts(self._experiment_filter(experiment))

    def status_counts_for(self, spec_hashes: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for chunk in chunks(list(spec_hashes)):
            for status, count in self._counts(TRIALS.c.spec_hash.in_(chunk)).items():
                counts[status] += count
        return counts

    def any_cancelled(self, spec_hashes: Sequence[str]) -> bool:
        with self._read() as connection:
            for chunk in chunks(list(spec_hashes)):
                query = select(TRIALS.c.id).where(TRIALS.c.spec_hash.in_(chunk),
                                                  TRIALS.c.status == TrialStatus.CANCELLED.value)
                if connection.execute(query.limit(1)).first() is not None:
                    return True
        return False

    def trial_by_hash(self, spec_hash: str) -> TrialRecord | None:
        with self._read() as connection:
            row = connection.execute(select(TRIALS).where(TRIALS.c.spec_hash == spec_hash)).one_or_none()
        return None if row is None else TrialRecord(**_values(row._mapping))

    def throughput(self, experiment: str | None = None, minutes: float = 60.0) -> Throughput:
        """Trials completed in the last `minutes`, and their mean duration (for an ETA).

        The rate's window starts at the earliest start among them when that is later than the
        window's start, so a run of ten minutes is not averaged over an hour.
        """
        now = utc_now()
        since = now - timedelta(minutes=minutes)
        query = select(func.count(), func.avg(TRIALS.c.duration_s), func.min(TRIALS.c.started_at)).where(
            self._experiment_filter(experiment), TRIALS.c.status == TrialStatus.COMPLETED.value,
            TRIALS.c.finished_at >= since,
        )
        with self._read() as connection:
            count, mean_duration, first_start = connection.execute(query).one()
        window = minutes * 60.0
        if isinstance(first_start, str):  # SQLite returns min() of a DATETIME column as text
            first_start = datetime.fromisoformat(first_start)
        first_start = aware(first_start)
        if count and first_start is not None:
            window = min(window, max(60.0, (now - first_start).total_seconds()))
        return Throughput(int(count), window, float(mean_duration) if mean_duration is not None else None)

    def trial_progress(self, experiment: str | None = None) -> list[TrialProgress]:
        """Every trial of the experiment (or all) with its status, times, worker and latest epoch."""
        last = (select(EPOCHS.c.trial_id, func.max(EPOCHS.c.epoch).label("last_epoch"))
                .group_by(EPOCHS.c.trial_id).subquery())
        query = (
            select(TRIALS.c.spec_hash, TRIALS.c.spec_json, TRIALS.c.status, TRIALS.c.error, TRIALS.c.started_at,
                   TRIALS.c.finished_at, TRIALS.c.worker, last.c.last_epoch)
            .outerjoin(last, last.c.trial_id == TRIALS.c.id)
            .where(self._experiment_filter(experiment))
            .order_by(TRIALS.c.id)
        )
        with self._read() as connection:
            return [TrialProgress(str(h), str(j), str(s), e, aware(a), aware(b), w, None if n is None else int(n))
                    for h, j, s, e, a, b, w, n in connection.execute(query)]

    def completed_per_hour(self, experiment: str | None = None) -> float:
        return self.throughput(experiment, minutes=60.0).per_hour

    # --- artifacts and baselines --------------------------------------------------------------

    def put_artifact(self, key_hash: str, kind: str, uri: str, meta: Mapping[str, Any] | None = None) -> bool:
        with self.transaction() as writer:
            return writer.put_artifact(key_hash, kind, uri, meta)

    def get_artifact(self, key_hash: str) -> ArtifactRecord | None:
        with self._read() as connection:
            row = connection.execute(select(ARTIFACTS).where(ARTIFACTS.c.key_hash == key_hash)).one_or_none()
        if row is None:
            return None
        values = _values(row._mapping)
        meta_json = values.pop("meta_json")
        return ArtifactRecord(**values, meta=json.loads(meta_json) if meta_json else {})

    def save_baseline(self, *, id_dataset: str, ood_dataset: str, input_size: int | None,
                      protocol: Mapping[str, Any], transform: str, slope: float, intercept: float, n_points: int,
                      r: float | None, slope_ci_low: float | None, slope_ci_high: float | None, fitted_from: str,
                      testbed: str | None = None) -> int:
        """Store a baseline fit for (ID, OOD, protocol) from `fitted_from`; a refit from the same testbed
        replaces that row in place (its id stays). Returns the row's id."""
        key = protocol_key(input_size, protocol)
        values = {"id_dataset": id_dataset, "ood_dataset": ood_dataset, "input_size": input_size,
                  "protocol_json": json.dumps({k: v for k, v in protocol.items() if v is not None}, sort_keys=True),
                  "protocol_key": key, "transform": transform, "slope": float(slope),
                  "intercept": float(intercept), "n_points": int(n_points),
                  "r": float(r) if r is not None else None,
                  "slope_ci_low": float(slope_ci_low) if slope_ci_low is not None else None,
                  "slope_ci_high": float(slope_ci_high) if slope_ci_high is not None else None,
                  "fitted_from": fitted_from, "testbed": testbed, "created_at": utc_now()}
        unique = ("id_dataset", "ood_dataset", "protocol_key", "fitted_from")
        stmt = self._insert(BASELINES).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(unique), set_={name: stmt.excluded[name] for name in values if name not in unique},
        )
        with self._write() as connection:
            connection.execute(stmt)
            return int(connection.execute(
                select(BASELINES.c.id).where(*(BASELINES.c[name] == values[name] for name in unique))
            ).scalar_one())

    def baselines(self, id_dataset: str | None = None, ood_dataset: str | None = None) -> list[BaselineRecord]:
        """Stored baselines (of that pair, if given), oldest first."""
        query = select(BASELINES).order_by(BASELINES.c.created_at, BASELINES.c.id)
        if id_dataset is not None:
            query = query.where(BASELINES.c.id_dataset == id_dataset)
        if ood_dataset is not None:
            query = query.where(BASELINES.c.ood_dataset == ood_dataset)
        with self._read() as connection:
            return [BaselineRecord(**_values(row._mapping)) for row in connection.execute(query)]

    def get_baseline(self, id_dataset: str, ood_dataset: str, input_size: int | None = None,
                     protocol: Mapping[str, Any] | None = None) -> BaselineRecord | None:
        """The latest stored baseline of (ID, OOD, protocol), whatever its testbed; None if there is none."""
        key = protocol_key(input_size, protocol or {})
        found = [b for b in self.baselines(id_dataset, ood_dataset) if b.protocol_key == key]
        return found[-1] if found else None

    # --- effective robustness -----------------------------------------------------------------

    def er_targets(self, experiment_id: int, id_dataset: str, ood_dataset: str) -> list[ErTarget]:
        """The experiment's trials on that (ID, OOD) pair with their specs, final accuracies (completed
        trials only) and stored per-epoch accuracies: what a fit for this experiment may fill."""
        trials = (
            select(TRIALS.c.id, TRIALS.c.spec_json, TRIALS.c.status, TRIALS.c.test_acc, TRIALS.c.ood_acc)
            .where(self._experiment_filter(experiment_id), TRIALS.c.dataset == id_dataset,
                   TRIALS.c.ood == ood_dataset)
            .order_by(TRIALS.c.id)
        )
        epochs = (
            select(EPOCHS.c.trial_id, EPOCHS.c.epoch, EPOCHS.c.test_acc, EPOCHS.c.ood_acc)
            .join(TRIALS, TRIALS.c.id == EPOCHS.c.trial_id)
            .where(self._experiment_filter(experiment_id), TRIALS.c.dataset == id_dataset,
                   TRIALS.c.ood == ood_dataset, EPOCHS.c.test_acc.is_not(None), EPOCHS.c.ood_acc.is_not(None))
            .order_by(EPOCHS.c.trial_id, EPOCHS.c.epoch)
        )
        with self._read() as connection:
            trial_rows = connection.execute(trials).all()
            by_trial: dict[int, list[EpochAccuracy]] = {}
            for t, e, a, o in connection.execute(epochs):
                by_trial.setdefault(int(t), []).append(EpochAccuracy(int(t), int(e), float(a), float(o)))
        targets = []
        for trial_id, spec_json, status, test_acc, ood_acc in trial_rows:
            final = status == TrialStatus.COMPLETED.value and test_acc is not None and ood_acc is not None
            targets.append(ErTarget(int(trial_id), str(spec_json), float(test_acc) if final else None,
                                    float(ood_acc) if final else None, tuple(by_trial.get(int(trial_id), ()))))
        return targets

    def testbed_points(self, experiment_id: int, id_dataset: str, ood_dataset: str) -> list[tuple[str, float, float]]:
        """(spec_json, test_acc, ood_acc) of the experiment's completed testbed transfers: trained on the
        ID data alone, from random weights, with no teacher (`init` = random, which the planner derives
        from the catalog's traits: distilled trials are not in the testbed)."""
        query = (
            select(TRIALS.c.spec_json, TRIALS.c.test_acc, TRIALS.c.ood_acc)
            .where(self._experiment_filter(experiment_id), TRIALS.c.kind == "transfer",
                   TRIALS.c.init == TrialInit.RANDOM.value,
                   TRIALS.c.dataset == id_dataset, TRIALS.c.ood == ood_dataset,
                   TRIALS.c.status == TrialStatus.COMPLETED.value,
                   TRIALS.c.test_acc.is_not(None), TRIALS.c.ood_acc.is_not(None))
            .order_by(TRIALS.c.id)
        )
        with self._read() as connection:
            return [(str(s), float(a), float(b)) for s, a, b in connection.execute(query)]

    def set_er(self, baseline_id: int, epochs: Iterable[tuple[int, int, float | None]],
               trials: Iterable[tuple[int, float | None]]) -> tuple[int, int]:
        """ER of (trial_id, epoch) rows and final ER of trials, each recorded with the baseline that
        produced it, in one transaction. Returns the numbers of epoch and trial rows given."""
        epoch_params = [{"b_trial": t, "b_epoch": e, "b_er": er, "b_base": baseline_id} for t, e, er in epochs]
        trial_params = [{"b_trial": t, "b_er": er, "b_base": baseline_id} for t, er in trials]
        epoch_stmt = (
            update(EPOCHS)
            .where(EPOCHS.c.trial_id == bindparam("b_trial"), EPOCHS.c.epoch == bindparam("b_epoch"))
            .values(er=bindparam("b_er"), er_baseline_id=bindparam("b_base"))
        )
        trial_stmt = (
            update(TRIALS).where(TRIALS.c.id == bindparam("b_trial"))
            .values(er=bindparam("b_er"), er_baseline_id=bindparam("b_base"))
        )
        with self._write() as connection:
            for stmt, params in ((epoch_stmt, epoch_params), (trial_stmt, trial_params)):
                for chunk in chunks(params):
                    connection.execute(stmt, list(chunk))
        return len(epoch_params), len(trial_params)

    # --- rows for reports ---------------------------------------------------------------------

    def trial_rows(self, experiment: str | int | None = None) -> list[TrialRecord]:
        """Every column of the experiment's trials (by name or id; None = all), by trial id."""
        query = select(TRIALS).where(self._experiment_filter(experiment)).order_by(TRIALS.c.id)
        with self._read() as connection:
            return [TrialRecord(**_values(row._mapping)) for row in connection.execute(query)]

    def epoch_rows(self, experiment: str | int | None = None) -> list[EpochRecord]:
        """One record per stored epoch: the trial's id, spec_hash, status and key columns, then the
        epoch's metrics; ordered by trial and epoch."""
        trial_columns = [TRIALS.c.spec_hash, TRIALS.c.status, *(TRIALS.c[name] for name in KEY_COLUMNS)]
        query = (
            select(EPOCHS.c.trial_id, *trial_columns, EPOCHS.c.epoch, *(EPOCHS.c[name] for name in EPOCH_METRICS),
                   EPOCHS.c.recorded_at)
            .join(TRIALS, TRIALS.c.id == EPOCHS.c.trial_id)
            .where(self._experiment_filter(experiment))
            .order_by(EPOCHS.c.trial_id, EPOCHS.c.epoch)
        )
        with self._read() as connection:
            return [EpochRecord(**_values(row._mapping)) for row in connection.execute(query)]
