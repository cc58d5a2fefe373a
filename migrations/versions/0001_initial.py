"""initial schema: experiments, trials, experiment_trials, epoch_metrics, artifacts, er_baselines, results view

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Never edit a revision after it has landed: add a new one. Self-contained on purpose (no
imports from db.models): it creates the schema as it was at this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")
# Names are final (op.f): the models' naming convention must not be applied to them again.
STATUSES = "'pending', 'running', 'completed', 'failed', 'cancelled'"

RESULTS_VIEW = """
CREATE VIEW results AS
SELECT e.name AS experiment, t.id AS trial_id, t.spec_hash, t.status,
       t.kind, t.arch, t.source, t.dataset, t.ood, t.method, t.blocks, t.subset_size, t.seed, t.epochs,
       t.test_acc, t.ood_acc, t.asr, t.adv_acc, t.clean_acc, t.er, t.robust_acc, t.duration_s,
       (SELECT max(m.epoch) FROM epoch_metrics m WHERE m.trial_id = t.id) AS last_epoch,
       t.finished_at
FROM experiment_trials et
JOIN experiments e ON e.id = et.experiment_id
JOIN trials t ON t.id = et.trial_id
"""


def _fraction(table: str, column: str, low: int = 0) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} >= {low} AND {column} <= 1", name=op.f(f"ck_{table}_{column}_range"))


def _created_at(name: str = "created_at") -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=NOW, nullable=False)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("grid", sa.Text(), nullable=False),
        sa.Column("grid_json", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("name", name=op.f("uq_experiments_name")),
    )

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("spec_hash", sa.CHAR(length=64), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checkpoint_uri", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("arch", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=True),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("ood", sa.String(), nullable=True),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("blocks", sa.Integer(), nullable=True),
        sa.Column("subset_size", sa.Integer(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("test_acc", sa.Double(), nullable=True),
        sa.Column("ood_acc", sa.Double(), nullable=True),
        sa.Column("asr", sa.Double(), nullable=True),
        sa.Column("adv_acc", sa.Double(), nullable=True),
        sa.Column("clean_acc", sa.Double(), nullable=True),
        sa.Column("er", sa.Double(), nullable=True),
        sa.Column("robust_acc", sa.Double(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_trials_status")),
        sa.CheckConstraint("kind IN ('source', 'transfer')", name=op.f("ck_trials_kind")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_trials_attempts")),
        sa.CheckConstraint("epochs >= 1", name=op.f("ck_trials_epochs")),
        sa.CheckConstraint("blocks >= 0", name=op.f("ck_trials_blocks")),
        sa.CheckConstraint("subset_size >= 1", name=op.f("ck_trials_subset_size")),
        sa.CheckConstraint("duration_s >= 0", name=op.f("ck_trials_duration_s")),
        *(_fraction("trials", c) for c in ("test_acc", "ood_acc", "asr", "adv_acc", "clean_acc", "robust_acc")),
        _fraction("trials", "er", low=-1),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("spec_hash", name=op.f("uq_trials_spec_hash")),
    )
    for column in ("status", "kind", "arch", "source", "dataset", "ood", "method", "blocks", "subset_size", "seed",
                   "epochs"):
        op.create_index(op.f(f"ix_trials_{column}"), "trials", [column])

    op.create_table(
        "experiment_trials",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_experiment_trials_experiment_id_experiments"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.id"], name=op.f("fk_experiment_trials_trial_id_trials"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "trial_id", name=op.f("pk_experiment_trials")),
    )
    op.create_index(op.f("ix_experiment_trials_trial_id"), "experiment_trials", ["trial_id"])

    op.create_table(
        "epoch_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Double(), nullable=True),
        sa.Column("train_acc", sa.Double(), nullable=True),
        sa.Column("test_acc", sa.Double(), nullable=True),
        sa.Column("ood_acc", sa.Double(), nullable=True),
        sa.Column("er", sa.Double(), nullable=True),
        sa.Column("lr", sa.Double(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("robust_acc", sa.Double(), nullable=True),
        _created_at("recorded_at"),
        sa.CheckConstraint("epoch >= 0", name=op.f("ck_epoch_metrics_epoch")),
        *(_fraction("epoch_metrics", c) for c in ("train_acc", "test_acc", "ood_acc", "robust_acc")),
        _fraction("epoch_metrics", "er", low=-1),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.id"], name=op.f("fk_epoch_metrics_trial_id_trials"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epoch_metrics")),
        sa.UniqueConstraint("trial_id", "epoch", name=op.f("uq_epoch_metrics_trial_id_epoch")),
    )

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("meta_json", sa.Text(), nullable=True),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_artifacts_key_hash")),
    )
    op.create_index(op.f("ix_artifacts_kind"), "artifacts", ["kind"])

    op.create_table(
        "er_baselines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("id_dataset", sa.String(), nullable=False),
        sa.Column("ood_dataset", sa.String(), nullable=False),
        sa.Column("transform", sa.String(length=16), nullable=False),
        sa.Column("slope", sa.Double(), nullable=False),
        sa.Column("intercept", sa.Double(), nullable=False),
        sa.Column("n_points", sa.Integer(), nullable=False),
        sa.Column("r", sa.Double(), nullable=True),
        sa.Column("fitted_from", sa.Text(), nullable=False),
        _created_at(),
        sa.CheckConstraint("transform IN ('logit', 'probit')", name=op.f("ck_er_baselines_transform")),
        sa.CheckConstraint("n_points >= 0", name=op.f("ck_er_baselines_n_points")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_er_baselines")),
        sa.UniqueConstraint("id_dataset", "ood_dataset", name=op.f("uq_er_baselines_id_dataset_ood_dataset")),
    )

    op.execute(RESULTS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS results")
    op.drop_table("er_baselines")
    op.drop_table("artifacts")
    op.drop_table("epoch_metrics")
    op.drop_table("experiment_trials")
    op.drop_table("trials")
    op.drop_table("experiments")
