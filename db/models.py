"""The rtgrid schema: SQLAlchemy 2.0 typed ORM. The schema lives here only.

Invariants are constraints in the database, not checks in Python: a spec is stored once
(`trials.spec_hash` UNIQUE), one row per (trial, epoch), one baseline per (ID, OOD) pair,
statuses and fractions are CHECKed. Migrations (migrations/versions) create exactly this;
tests/test_migrations.py compares the two.

All accuracies, ASR and ER are fractions; timestamps are UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CHAR,
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "cancelled")
KINDS: tuple[str, ...] = ("source", "transfer")
TRANSFORMS: tuple[str, ...] = ("logit", "probit")

# Key fields of a spec stored as real (indexed) columns of `trials`.
KEY_COLUMNS: tuple[str, ...] = (
    "kind", "arch", "source", "dataset", "ood", "method", "blocks", "subset_size", "seed", "epochs",
)
# Final metrics of a trial (fractions in [0,1], except ER in [-1,1]).
FINAL_METRICS: tuple[str, ...] = ("test_acc", "ood_acc", "asr", "adv_acc", "clean_acc", "er", "robust_acc")
# Per-epoch metrics of `epoch_metrics`.
EPOCH_METRICS: tuple[str, ...] = (
    "train_loss", "train_acc", "test_acc", "ood_acc", "er", "lr", "seconds", "robust_acc",
)

# Deterministic constraint names: migrations refer to them, and both backends agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _fraction(column: str, low: int = 0) -> CheckConstraint:
    # NULL passes a CHECK: a metric that was not measured stays NULL.
    return CheckConstraint(f"{column} >= {low} AND {column} <= 1", name=f"{column}_range")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Experiment(Base):
    """A named submission of a grid; trials are shared between experiments via experiment_trials."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    grid: Mapped[str] = mapped_column(Text)  # preset name or grid file path
    grid_json: Mapped[str | None] = mapped_column(Text)  # the expanded grid description
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.current_timestamp())
    notes: Mapped[str | None] = mapped_column(Text)

    trials: Mapped[list[Trial]] = relationship(
        secondary="experiment_trials", back_populates="experiments", passive_deletes=True
    )


class Trial(Base):
    """One spec (deduplicated by spec_hash across all experiments) and its final result."""

    __tablename__ = "trials"
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint(_in("kind", KINDS), name="kind"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("epochs >= 1", name="epochs"),
        CheckConstraint("blocks >= 0", name="blocks"),
        CheckConstraint("subset_size >= 1", name="subset_size"),
        CheckConstraint("duration_s >= 0", name="duration_s"),
        _fraction("test_acc"),
        _fraction("ood_acc"),
        _fraction("asr"),
        _fraction("adv_acc"),
        _fraction("clean_acc"),
        _fraction("robust_acc"),
        _fraction("er", low=-1),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec_hash: Mapped[str] = mapped_column(CHAR(64), unique=True)
    spec_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.current_timestamp())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checkpoint_uri: Mapped[str | None] = mapped_column(Text)

    kind: Mapped[str] = mapped_column(String(16), index=True)
    arch: Mapped[str] = mapped_column(String, index=True)
    source: Mapped[str | None] = mapped_column(String, index=True)
    dataset: Mapped[str] = mapped_column(String, index=True)
    ood: Mapped[str | None] = mapped_column(String, index=True)
    method: Mapped[str] = mapped_column(String, index=True)
    blocks: Mapped[int | None] = mapped_column(Integer, index=True)
    subset_size: Mapped[int | None] = mapped_column(Integer, index=True)  # NULL = the full training split
    seed: Mapped[int] = mapped_column(BigInteger, index=True)
    epochs: Mapped[int] = mapped_column(Integer, index=True)

    test_acc: Mapped[float | None] = mapped_column(Double)
    ood_acc: Mapped[float | None] = mapped_column(Double)
    asr: Mapped[float | None] = mapped_column(Double)
    adv_acc: Mapped[float | None] = mapped_column(Double)
    clean_acc: Mapped[float | None] = mapped_column(Double)
    er: Mapped[float | None] = mapped_column(Double)
    robust_acc: Mapped[float | None] = mapped_column(Double)
    duration_s: Mapped[float | None] = mapped_column(Double)
    worker: Mapped[str | None] = mapped_column(Text)  # node / host the trial ran on
    # The driver that queued this trial; its heartbeat_at keeps the claim alive (revision 0002).
    claimed_by: Mapped[str | None] = mapped_column(String(64), index=True)

    experiments: Mapped[list[Experiment]] = relationship(
        secondary="experiment_trials", back_populates="trials", passive_deletes=True
    )
    epoch_metrics: Mapped[list[EpochMetric]] = relationship(
        back_populates="trial", passive_deletes=True, order_by="EpochMetric.epoch"
    )


class ExperimentTrial(Base):
    __tablename__ = "experiment_trials"
    __table_args__ = (Index(None, "trial_id"),)

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True)


class EpochMetric(Base):
    """Metrics of one trial at one evaluation epoch (1-based); ER is back-filled when a baseline is fitted."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (
        UniqueConstraint("trial_id", "epoch"),
        CheckConstraint("epoch >= 0", name="epoch"),
        _fraction("train_acc"),
        _fraction("test_acc"),
        _fraction("ood_acc"),
        _fraction("robust_acc"),
        _fraction("er", low=-1),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Double)
    train_acc: Mapped[float | None] = mapped_column(Double)
    test_acc: Mapped[float | None] = mapped_column(Double)
    ood_acc: Mapped[float | None] = mapped_column(Double)
    er: Mapped[float | None] = mapped_column(Double)
    lr: Mapped[float | None] = mapped_column(Double)
    seconds: Mapped[float | None] = mapped_column(Double)
    robust_acc: Mapped[float | None] = mapped_column(Double)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.current_timestamp())

    trial: Mapped[Trial] = relationship(back_populates="epoch_metrics")


class Artifact(Base):
    """Work shared by many trials (source checkpoints, cached adversarial sets), keyed by content."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String, index=True)
    uri: Mapped[str] = mapped_column(Text)
    meta_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.current_timestamp())


class ErBaseline(Base):
    """The linear fit (in logit/probit space) that predicts OOD from ID accuracy; the latest fit wins."""

    __tablename__ = "er_baselines"
    __table_args__ = (
        UniqueConstraint("id_dataset", "ood_dataset"),
        CheckConstraint(_in("transform", TRANSFORMS), name="transform"),
        CheckConstraint("n_points >= 0", name="n_points"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id_dataset: Mapped[str] = mapped_column(String)
    ood_dataset: Mapped[str] = mapped_column(String)
    transform: Mapped[str] = mapped_column(String(16))
    slope: Mapped[float] = mapped_column(Double)
    intercept: Mapped[float] = mapped_column(Double)
    n_points: Mapped[int] = mapped_column(Integer)
    r: Mapped[float | None] = mapped_column(Double)
    fitted_from: Mapped[str] = mapped_column(Text)  # published:NAME | csv:PATH | experiment:NAME
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.current_timestamp())


# Columns of the `results` view (created by the migrations): one row per (experiment, trial).
RESULTS_VIEW_COLUMNS: tuple[str, ...] = (
    "experiment", "trial_id", "spec_hash", "status", *KEY_COLUMNS,
    *FINAL_METRICS, "duration_s", "last_epoch", "finished_at",
)
