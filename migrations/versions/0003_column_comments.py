"""Column and table comments: what each column means, stored in the PostgreSQL catalog

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

db/models.py owns the meaning of every table and column (`comment=`); `rtgrid query --schema`
prints it, and on PostgreSQL this revision stores it with COMMENT ON (psql's \\d+, any SQL client,
`col_description()`), so that `alembic check` finds the migrated schema equal to the models.

SQLite has no comments: this revision does nothing there (and the schema is unchanged).

The comments below are a literal copy of db/models.py at this revision (a revision is a frozen
snapshot: never import them from db.models). A later change of a comment needs a new revision.
Never edit a revision after it has landed.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE_COMMENTS: dict[str, str] = {
    "experiments": "one row per named submission of a grid",
    "trials": "one row per spec (deduplicated by spec_hash across experiments) with its final result",
    "experiment_trials": "which trials belong to which experiment (many-to-many)",
    "epoch_metrics": "metrics of a trial at each evaluation epoch",
    "artifacts": "work shared by many trials: source checkpoints, cached adversarial sets",
    "er_baselines": "linear fits (logit/probit space) predicting OOD accuracy from ID accuracy, for ER",
}
COLUMN_COMMENTS: dict[str, dict[str, str]] = {
    "experiments": {
        "id": "primary key",
        "name": "experiment name (unique), e.g. utrera2021",
        "grid": "grid preset name or grid file path",
        "grid_json": "JSON summary of the expanded grid",
        "created_at": "when the experiment was first submitted (UTC)",
        "notes": "free text",
    },
    "trials": {
        "id": "primary key",
        "spec_hash": "sha256 of the canonical spec JSON: the deduplication key (unique)",
        "spec_json": "the full TrialSpec as canonical JSON (params included)",
        "status": "pending | running | completed | failed | cancelled",
        "attempts": "how many times the trial was started",
        "error": "one-line error of the last failed attempt",
        "created_at": "when the trial was first planned (UTC)",
        "started_at": "when the last attempt started (UTC)",
        "finished_at": "when the trial completed or failed (UTC)",
        "heartbeat_at": "last sign of life of a running trial (UTC)",
        "checkpoint_uri": "the trained model's checkpoint (source trials)",
        "kind": "source (trains a source model) | transfer (fine-tunes a source on a target)",
        "arch": "architecture, e.g. resnet50, tiny_resnet",
        "source": ("pre-trained weights: torchvision:<arch> (natural), robustness:<name> (Madry robust), "
                   "spec:<spec_hash> (a source trial), file:<name> (its sha256 in spec_json), scratch (random init); "
                   "NULL for source trials. Random-init trials: a method with the catalog trait random_init (source "
                   "kept for ASR) or source scratch"),
        "dataset": "training / ID dataset (target of a transfer)",
        "ood": "OOD evaluation set (cifar10.1, noise-3, ...); NULL = none",
        "method": "training method, a name of workers/catalog.py's METHODS",
        "blocks": "residual blocks fine-tuned besides the head (Utrera: 0/1/3/9); NULL = all",
        "subset_size": "training images used (random class-covering subset); NULL = the full training set",
        "seed": "random seed (also fixes the training subset: runs pair by seed)",
        "epochs": "training epochs",
        "test_acc": "final (last-epoch) ID test accuracy, fraction in [0,1]",
        "ood_acc": "final OOD accuracy, fraction in [0,1]",
        "asr": "attack success rate of the penultimate-layer attack on the pre-trained source, fraction in [0,1]",
        "adv_acc": "accuracy on the attack's adversarial images, fraction in [0,1]",
        "clean_acc": "accuracy on the attack's clean images, fraction in [0,1]",
        "er": "effective robustness at the last epoch: OOD acc - baseline-predicted OOD acc, fraction in [-1,1]",
        "robust_acc": "PGD robust test accuracy (source trials), fraction in [0,1]",
        "duration_s": "wall-clock seconds the trial's kernel ran",
        "worker": "node / host that ran the trial",
        "claimed_by": "the driver that has queued the trial (concurrent drivers never run it twice); NULL = none",
    },
    "experiment_trials": {
        "experiment_id": "experiments.id",
        "trial_id": "trials.id",
    },
    "epoch_metrics": {
        "id": "primary key",
        "trial_id": "trials.id",
        "epoch": "evaluation epoch, 1-based",
        "train_loss": "mean training loss over the epoch",
        "train_acc": "training accuracy over the epoch, fraction in [0,1]",
        "test_acc": "ID test accuracy at this epoch, fraction in [0,1]",
        "ood_acc": "OOD accuracy at this epoch, fraction in [0,1]",
        "er": "effective robustness at this epoch (filled when a baseline is fitted), fraction in [-1,1]",
        "lr": "learning rate at the end of the epoch",
        "seconds": "wall-clock seconds of this epoch",
        "robust_acc": "PGD robust test accuracy at this epoch (source trials), fraction in [0,1]",
        "recorded_at": "when the row was written (UTC)",
    },
    "artifacts": {
        "id": "primary key",
        "key_hash": "content key (unique): what the artifact was computed from",
        "kind": "artifact kind, e.g. source-checkpoint, adversarial-set",
        "uri": "where the artifact is stored",
        "meta_json": "JSON metadata",
        "created_at": "when it was recorded (UTC)",
    },
    "er_baselines": {
        "id": "primary key",
        "id_dataset": "ID dataset of the fit, e.g. cifar10",
        "ood_dataset": "OOD dataset of the fit, e.g. cifar10.1",
        "transform": "logit | probit: the space of the linear fit",
        "slope": "a in transform(OOD) = a * transform(ID) + b",
        "intercept": "b in transform(OOD) = a * transform(ID) + b",
        "n_points": "number of models the fit used",
        "r": "correlation of the fit in transformed space",
        "fitted_from": "published:NAME | csv:PATH | experiment:NAME",
        "created_at": "when the fit was stored (UTC)",
    },
}


def _has_comments() -> bool:
    # op.get_context() works online and offline (--sql); SQLite stores no comments.
    return bool(op.get_context().dialect.supports_comments)


def upgrade() -> None:
    if not _has_comments():
        return
    for table, comment in TABLE_COMMENTS.items():
        op.create_table_comment(table, comment)
    for table, columns in COLUMN_COMMENTS.items():
        for column, comment in columns.items():
            op.alter_column(table, column, comment=comment)  # COMMENT ON COLUMN: no table rewrite


def downgrade() -> None:
    if not _has_comments():
        return
    for table, columns in COLUMN_COMMENTS.items():
        for column, comment in columns.items():
            op.alter_column(table, column, comment=None, existing_comment=comment)
    for table, comment in TABLE_COMMENTS.items():
        op.drop_table_comment(table, existing_comment=comment)
