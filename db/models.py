"""The rtgrid schema: SQLAlchemy 2.0 typed ORM. The schema lives here only.

The schema also owns what its names mean: `TrialStatus` (and its named groups) is the one list of
trial statuses, and every column and table carries its meaning as a comment (`comment=`), which
`rtgrid query --schema` prints and PostgreSQL stores (revision 0003).

Invariants are constraints in the database, not checks in Python: a spec is stored once
(`trials.spec_hash` UNIQUE), one row per (trial, epoch), one baseline per (ID, OOD, evaluation protocol, testbed),
statuses and fractions are CHECKed. Migrations (migrations/versions) create exactly this;
tests/test_migrations.py compares the two.

All accuracies, ASR and ER are fractions; timestamps are UTC.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

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


class TrialStatus(StrEnum):
    """A trial's `trials.status`: the one owner of the status names (the CHECK lists exactly these)."""

    PENDING = "pending"  # planned or queued, not started
    RUNNING = "running"  # a worker is running it (or its driver died: see the heartbeat)
    COMPLETED = "completed"  # final metrics recorded; never run or reset again
    FAILED = "failed"  # the last attempt raised (or was interrupted); runs again on resume
    CANCELLED = "cancelled"  # `rtgrid cancel`; runs again only after `rtgrid retry --cancelled`

    @classmethod
    def finished(cls) -> frozenset[TrialStatus]:
        return FINISHED


# The groups of statuses the code acts on, named once.
FINISHED: frozenset[TrialStatus] = frozenset({TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.CANCELLED})
ACTIVE: frozenset[TrialStatus] = frozenset({TrialStatus.PENDING, TrialStatus.RUNNING})  # not finished
RUNNABLE: frozenset[TrialStatus] = frozenset({TrialStatus.PENDING, TrialStatus.FAILED})  # a driver may queue
STARTABLE: frozenset[TrialStatus] = RUNNABLE | {TrialStatus.RUNNING}  # a worker may (re)start
RETRYABLE: frozenset[TrialStatus] = frozenset(TrialStatus) - {TrialStatus.COMPLETED}  # may be reset to pending
STATUSES: tuple[str, ...] = tuple(status.value for status in TrialStatus)  # in lifecycle order


class TrialInit(StrEnum):
    """A trial's `trials.init`: where its backbone's weights start and what it learns from.

    The one owner of the names (the CHECK lists exactly these). The planner writes the value from
    the spec and the catalog's method traits (orchestrator/plan/planner.py `trial_init`); the
    database cannot ask the catalog, so the value is stored.
    """

    # from the source's weights (e.g. finetune, linear, l2sp, delta)
    PRETRAINED = "pretrained"
    # random weights, learns from nothing pre-trained: the ER testbed (e.g. retrain, any method from source
    # scratch) and every source trial (it trains a source model from scratch)
    RANDOM = "random"
    # random weights, learns from the pre-trained source as a teacher (e.g. renofeation, delta-r): not random
    # init in the ER sense
    DISTILLED = "distilled"


INITS: tuple[str, ...] = tuple(init.value for init in TrialInit)
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

# Columns of `trials` the planner derives from a spec (not spec fields): every planned row carries them.
DERIVED_COLUMNS: tuple[str, ...] = ("init",)
INIT_COMMENT = (
    "how the backbone starts: pretrained (from the source's weights) | random (random weights, learns from "
    "nothing pre-trained: the ER testbed, source scratch, and every source trial) | distilled (random weights, "
    "learns from the pre-trained source as a teacher: not random init in the ER sense); set at plan time from "
    "the method's catalog traits"
)

# The column that records, next to every ER value (epoch_metrics and trials), the baseline that produced it.
ER_PROVENANCE = "er_baseline_id"


def protocol_key(input_size: int | None, protocol: Mapping[str, Any]) -> str:
    """The canonical text of an evaluation protocol (`er_baselines.protocol_key`): the input size and
    the generator parameters, as sorted compact JSON; an absent or None value is left out. Which
    parameters define a protocol is the orchestrator's (orchestrator/results/er.py PROTOCOL_PARAMS)."""
    values = {name: value for name, value in protocol.items() if value is not None}
    return json.dumps({"input_size": input_size, **values}, sort_keys=True, separators=(",", ":"))


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
    __table_args__ = {"comment": "one row per named submission of a grid"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="primary key")
    name: Mapped[str] = mapped_column(String, unique=True, comment="experiment name (unique), e.g. utrera2021")
    grid: Mapped[str] = mapped_column(Text, comment="grid preset name or grid file path")
    grid_json: Mapped[str | None] = mapped_column(Text, comment="JSON summary of the expanded grid")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp(),
        comment="when the experiment was first submitted (UTC)",
    )
    notes: Mapped[str | None] = mapped_column(Text, comment="free text")

    trials: Mapped[list[Trial]] = relationship(
        secondary="experiment_trials", back_populates="experiments", passive_deletes=True
    )


class Trial(Base):
    """One spec (deduplicated by spec_hash across all experiments) and its final result."""

    __tablename__ = "trials"
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint(_in("kind", KINDS), name="kind"),
        CheckConstraint(_in("init", INITS), name="init"),
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
        {"comment": "one row per spec (deduplicated by spec_hash across experiments) with its final result"},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="primary key")
    spec_hash: Mapped[str] = mapped_column(
        CHAR(64), unique=True,
        comment="sha256 of the canonical spec JSON: the deduplication key (unique)",
    )
    spec_json: Mapped[str] = mapped_column(Text, comment="the full TrialSpec as canonical JSON (params included)")
    status: Mapped[str] = mapped_column(
        String(16), index=True, server_default=TrialStatus.PENDING.value, comment=" | ".join(STATUSES),
    )
    attempts: Mapped[int] = mapped_column(Integer, server_default="0", comment="how many times the trial was started")
    error: Mapped[str | None] = mapped_column(Text, comment="one-line error of the last failed attempt")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp(),
        comment="when the trial was first planned (UTC)",
    )
    started_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True),
        comment="when the last attempt started (UTC)",
    )
    finished_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True),
        comment="when the trial completed or failed (UTC)",
    )
    heartbeat_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True),
        comment="last sign of life of a running trial (UTC)",
    )
    checkpoint_uri: Mapped[str | None] = mapped_column(Text, comment="the trained model's checkpoint (source trials)")

    kind: Mapped[str] = mapped_column(
        String(16), index=True,
        comment="source (trains a source model) | transfer (fine-tunes a source on a target)",
    )
    arch: Mapped[str] = mapped_column(String, index=True, comment="architecture, e.g. resnet50, tiny_resnet")
    source: Mapped[str | None] = mapped_column(
        String, index=True,
        comment=(
            "pre-trained weights: torchvision:<arch> (natural), robustness:<name> (Madry robust), "
            "spec:<spec_hash> (a source trial), file:<name> (its sha256 in spec_json), scratch (random init); "
            "NULL for source trials. A method that starts from random weights keeps its source as teacher or for "
            "ASR: see init, not source, for how a trial starts"
        ),
    )
    dataset: Mapped[str] = mapped_column(String, index=True, comment="training / ID dataset (target of a transfer)")
    ood: Mapped[str | None] = mapped_column(
        String, index=True,
        comment="OOD evaluation set (cifar10.1, noise-3, ...); NULL = none",
    )
    method: Mapped[str] = mapped_column(
        String, index=True,
        comment=(
            "training method, a name of workers/catalog.py's METHODS"
        ),
    )
    blocks: Mapped[int | None] = mapped_column(
        Integer, index=True,
        comment="residual blocks fine-tuned besides the head (Utrera: 0/1/3/9); NULL = all",
    )
    subset_size: Mapped[int | None] = mapped_column(
        Integer, index=True,
        comment="training images used (random class-covering subset); NULL = the full training set",
    )
    seed: Mapped[int] = mapped_column(
        BigInteger, index=True,
        comment="random seed (also fixes the training subset: runs pair by seed)",
    )
    epochs: Mapped[int] = mapped_column(Integer, index=True, comment="training epochs")

    test_acc: Mapped[float | None] = mapped_column(
        Double,
        comment="final (last-epoch) ID test accuracy, fraction in [0,1]",
    )
    ood_acc: Mapped[float | None] = mapped_column(Double, comment="final OOD accuracy, fraction in [0,1]")
    asr: Mapped[float | None] = mapped_column(
        Double,
        comment="attack success rate of the penultimate-layer attack on the pre-trained source, fraction in [0,1]",
    )
    adv_acc: Mapped[float | None] = mapped_column(
        Double,
        comment="accuracy on the attack's adversarial images, fraction in [0,1]",
    )
    clean_acc: Mapped[float | None] = mapped_column(
        Double,
        comment="accuracy on the attack's clean images, fraction in [0,1]",
    )
    er: Mapped[float | None] = mapped_column(
        Double,
        comment="effective robustness at the last epoch: OOD acc - baseline-predicted OOD acc, fraction in [-1,1]",
    )
    er_baseline_id: Mapped[int | None] = mapped_column(
        ForeignKey("er_baselines.id"),
        comment="er_baselines.id: the baseline that produced er (NULL when er is NULL)",
    )
    robust_acc: Mapped[float | None] = mapped_column(
        Double,
        comment="PGD robust test accuracy (source trials), fraction in [0,1]",
    )
    duration_s: Mapped[float | None] = mapped_column(Double, comment="wall-clock seconds the trial's kernel ran")
    worker: Mapped[str | None] = mapped_column(Text, comment="node / host that ran the trial")
    # The driver that queued this trial; its heartbeat_at keeps the claim alive (revision 0002).
    claimed_by: Mapped[str | None] = mapped_column(
        String(64), index=True,
        comment="the driver that has queued the trial (concurrent drivers never run it twice); NULL = none",
    )
    # Where the claiming driver runs (revision 0006): a local claim whose process is gone is dead at once.
    claim_host: Mapped[str | None] = mapped_column(
        String(255), comment="host name of the driver process that holds the claim; NULL = no claim",
    )
    claim_pid: Mapped[int | None] = mapped_column(
        Integer, comment="process id of the driver that holds the claim (on claim_host)",
    )
    claim_pid_start: Mapped[int | None] = mapped_column(
        BigInteger,
        comment="start time of that process in clock ticks after boot (tells a reused process id apart); "
                "NULL = unknown",
    )
    # How the backbone starts, written by the planner from the method's catalog traits (revision 0004).
    init: Mapped[str] = mapped_column(String(16), index=True, comment=INIT_COMMENT)

    experiments: Mapped[list[Experiment]] = relationship(
        secondary="experiment_trials", back_populates="trials", passive_deletes=True
    )
    epoch_metrics: Mapped[list[EpochMetric]] = relationship(
        back_populates="trial", passive_deletes=True, order_by="EpochMetric.epoch"
    )


class ExperimentTrial(Base):
    __tablename__ = "experiment_trials"
    __table_args__ = (Index(None, "trial_id"), {"comment": "which trials belong to which experiment (many-to-many)"})

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True,
        comment="experiments.id",
    )
    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True,
        comment="trials.id",
    )


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
        {"comment": "metrics of a trial at each evaluation epoch"},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="primary key")
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), comment="trials.id")
    epoch: Mapped[int] = mapped_column(Integer, comment="evaluation epoch, 1-based")
    train_loss: Mapped[float | None] = mapped_column(Double, comment="mean training loss over the epoch")
    train_acc: Mapped[float | None] = mapped_column(
        Double,
        comment="training accuracy over the epoch, fraction in [0,1]",
    )
    test_acc: Mapped[float | None] = mapped_column(Double, comment="ID test accuracy at this epoch, fraction in [0,1]")
    ood_acc: Mapped[float | None] = mapped_column(Double, comment="OOD accuracy at this epoch, fraction in [0,1]")
    er: Mapped[float | None] = mapped_column(
        Double,
        comment="effective robustness at this epoch (filled when a baseline is fitted), fraction in [-1,1]",
    )
    er_baseline_id: Mapped[int | None] = mapped_column(
        ForeignKey("er_baselines.id"),
        comment="er_baselines.id: the baseline that produced er (NULL when er is NULL)",
    )
    lr: Mapped[float | None] = mapped_column(Double, comment="learning rate at the end of the epoch")
    seconds: Mapped[float | None] = mapped_column(Double, comment="wall-clock seconds of this epoch")
    robust_acc: Mapped[float | None] = mapped_column(
        Double,
        comment="PGD robust test accuracy at this epoch (source trials), fraction in [0,1]",
    )
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp(),
        comment="when the row was written (UTC)",
    )

    trial: Mapped[Trial] = relationship(back_populates="epoch_metrics")


class Artifact(Base):
    """Work shared by many trials (source checkpoints, cached adversarial sets), keyed by content."""

    __tablename__ = "artifacts"
    __table_args__ = {"comment": "work shared by many trials: source checkpoints, cached adversarial sets"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="primary key")
    key_hash: Mapped[str] = mapped_column(
        String, unique=True,
        comment="content key (unique): what the artifact was computed from",
    )
    kind: Mapped[str] = mapped_column(
        String, index=True,
        comment="artifact kind, e.g. source-checkpoint, adversarial-set",
    )
    uri: Mapped[str] = mapped_column(Text, comment="where the artifact is stored")
    meta_json: Mapped[str | None] = mapped_column(Text, comment="JSON metadata")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp(),
        comment="when it was recorded (UTC)",
    )


class ErBaseline(Base):
    """The linear fit (in logit/probit space) that predicts OOD from ID accuracy under one evaluation
    protocol (ID set, OOD set, input size, generator parameters), from one testbed (fitted_from).
    A refit from the same testbed replaces the row in place; a fit from another testbed is another row."""

    __tablename__ = "er_baselines"
    __table_args__ = (
        UniqueConstraint("id_dataset", "ood_dataset", "protocol_key", "fitted_from"),
        CheckConstraint(_in("transform", TRANSFORMS), name="transform"),
        CheckConstraint("n_points >= 0", name="n_points"),
        {"comment": "linear fits (logit/probit space) predicting OOD accuracy from ID accuracy, for ER"},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, comment="primary key")
    id_dataset: Mapped[str] = mapped_column(String, comment="ID dataset of the fit, e.g. cifar10")
    ood_dataset: Mapped[str] = mapped_column(String, comment="OOD dataset of the fit, e.g. cifar10.1")
    input_size: Mapped[int | None] = mapped_column(
        Integer,
        comment="model input side in pixels of the protocol (spec param input_size); NULL = the kernel default",
    )
    protocol_json: Mapped[str] = mapped_column(
        Text, server_default="{}",
        comment="the protocol's generator parameters (spec params num_classes, train_images, augment, eval_images) "
                "as JSON; {} = all defaults",
    )
    protocol_key: Mapped[str] = mapped_column(
        String, server_default='{"input_size":null}',
        comment="canonical JSON of input_size and protocol_json: the protocol part of the unique key",
    )
    transform: Mapped[str] = mapped_column(String(16), comment="logit | probit: the space of the linear fit")
    slope: Mapped[float] = mapped_column(Double, comment="a in transform(OOD) = a * transform(ID) + b")
    intercept: Mapped[float] = mapped_column(Double, comment="b in transform(OOD) = a * transform(ID) + b")
    n_points: Mapped[int] = mapped_column(Integer, comment="number of models the fit used")
    r: Mapped[float | None] = mapped_column(Double, comment="correlation of the fit in transformed space")
    slope_ci_low: Mapped[float | None] = mapped_column(
        Double, comment="lower end of the slope's 95% CI (OLS standard error, Student t); NULL = unknown",
    )
    slope_ci_high: Mapped[float | None] = mapped_column(
        Double, comment="upper end of the slope's 95% CI (OLS standard error, Student t); NULL = unknown",
    )
    fitted_from: Mapped[str] = mapped_column(Text, comment="published:NAME | csv:PATH | experiment:NAME")
    testbed: Mapped[str | None] = mapped_column(Text, comment="what the testbed was, in words")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp(),
        comment="when the fit was stored (UTC)",
    )


# Columns of the `results` view (created by the migrations): one row per (experiment, trial).
RESULTS_VIEW_COLUMNS: tuple[str, ...] = (
    "experiment", "trial_id", "spec_hash", "status", *KEY_COLUMNS, *DERIVED_COLUMNS,
    *FINAL_METRICS, "duration_s", "last_epoch", "finished_at",
)
RESULTS_VIEW = "results"  # the view users start from (created by the migrations)
RESULTS_VIEW_COMMENT = "one row per (experiment, trial) with the key fields and final metrics; start here"
# The view's own columns (and spec_hash, not unique in the view); the others mean what `trials`' column does.
RESULTS_VIEW_ONLY_COLUMNS: dict[str, str] = {
    "experiment": "experiments.name",
    "trial_id": "trials.id",
    "spec_hash": "trials.spec_hash",
    "last_epoch": "the last epoch with recorded metrics",
}


def results_view_comments() -> dict[str, str]:
    """Column -> meaning for every column of the `results` view, in the view's order."""
    trials = Base.metadata.tables["trials"].c
    return {name: RESULTS_VIEW_ONLY_COLUMNS.get(name) or trials[name].comment or "" for name in RESULTS_VIEW_COLUMNS}


def status_values(group: Collection[str]) -> tuple[str, ...]:
    """The statuses of `group` as plain strings, in lifecycle order (stable SQL `IN (...)` lists)."""
    return tuple(status.value for status in TrialStatus if status in group)
