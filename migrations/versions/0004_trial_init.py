"""trials.init (pretrained | random | distilled): how a trial's backbone starts; the results view shows it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

A random-init method (retrain) keeps its `source` for the ASR attack, and a distilling one
(renofeation, delta-r) keeps it as its teacher, so `source` does not say how a trial starts: a
retrain trial from the natural source read as "natural" and was pooled with the fine-tuned ones.
The rule lives in the catalog's method traits (Python), which SQL cannot ask: the planner writes
the value at plan time, and this revision back-fills the existing rows with the rule as it is at
this revision, written out literally (a revision is a frozen snapshot: never import the catalog
or db.models here; a method added later is planned with its value and needs no revision):

    random      source trials (trained from scratch), source 'scratch', or a method with
                random_init and not distils (the ER testbed)
    distilled   a method with random_init and distils: random weights, a pre-trained teacher
    pretrained  everything else

SQLite cannot add a NOT NULL column without a default, so `trials` is rebuilt there (batch
mode; rtgrid's migration transaction switches foreign keys off, so nothing cascades). The
`results` view is dropped first and recreated with the column. On PostgreSQL the column's
comment is stored and the `source` comment no longer claims to define random init.
Never edit a revision after it has landed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INITS = ("pretrained", "random", "distilled")
# The catalog's transfer methods at this revision, by trait (workers/catalog.py METHODS).
RANDOM_METHODS = ("retrain",)  # random_init and not distils
DISTILLED_METHODS = ("renofeation", "delta-r")  # random_init and distils


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


BACKFILL = f"""
UPDATE trials SET init = CASE
    WHEN kind = 'source' OR source = 'scratch' THEN 'random'
    WHEN method IN ({_sql_list(RANDOM_METHODS)}) THEN 'random'
    WHEN method IN ({_sql_list(DISTILLED_METHODS)}) THEN 'distilled'
    ELSE 'pretrained'
END
"""

RESULTS_VIEW = """
CREATE VIEW results AS
SELECT e.name AS experiment, t.id AS trial_id, t.spec_hash, t.status,
       t.kind, t.arch, t.source, t.dataset, t.ood, t.method, t.blocks, t.subset_size, t.seed, t.epochs,
       t.init,
       t.test_acc, t.ood_acc, t.asr, t.adv_acc, t.clean_acc, t.er, t.robust_acc, t.duration_s,
       (SELECT max(m.epoch) FROM epoch_metrics m WHERE m.trial_id = t.id) AS last_epoch,
       t.finished_at
FROM experiment_trials et
JOIN experiments e ON e.id = et.experiment_id
JOIN trials t ON t.id = et.trial_id
"""
# The view as revision 0001 created it (restored by the downgrade).
RESULTS_VIEW_0001 = """
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

INIT_COMMENT = (
    "how the backbone starts: pretrained (from the source's weights) | random (random weights, learns from "
    "nothing pre-trained: the ER testbed, source scratch, and every source trial) | distilled (random weights, "
    "learns from the pre-trained source as a teacher: not random init in the ER sense); set at plan time from "
    "the method's catalog traits"
)
SOURCE_COMMENT = (
    "pre-trained weights: torchvision:<arch> (natural), robustness:<name> (Madry robust), "
    "spec:<spec_hash> (a source trial), file:<name> (its sha256 in spec_json), scratch (random init); "
    "NULL for source trials. A method that starts from random weights keeps its source as teacher or for "
    "ASR: see init, not source, for how a trial starts"
)
SOURCE_COMMENT_0003 = (
    "pre-trained weights: torchvision:<arch> (natural), robustness:<name> (Madry robust), "
    "spec:<spec_hash> (a source trial), file:<name> (its sha256 in spec_json), scratch (random init); "
    "NULL for source trials. Random-init trials: a method with the catalog trait random_init (source "
    "kept for ASR) or source scratch"
)
INIT_TYPE = sa.String(length=16)


def _has_comments() -> bool:
    return bool(op.get_context().dialect.supports_comments)


def _recreate() -> Literal["auto", "always"]:
    # SQLite: rebuild `trials` (copy, drop, rename) for NOT NULL and the CHECK; PostgreSQL: plain ALTERs.
    return "always" if op.get_context().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS results")
    op.add_column("trials", sa.Column("init", INIT_TYPE, nullable=True))
    op.execute(BACKFILL)
    with op.batch_alter_table("trials", recreate=_recreate()) as batch:
        batch.alter_column("init", existing_type=INIT_TYPE, nullable=False)
        batch.create_check_constraint(op.f("ck_trials_init"), f"init IN ({_sql_list(INITS)})")
        batch.create_index(op.f("ix_trials_init"), ["init"])
    if _has_comments():
        op.alter_column("trials", "init", existing_type=INIT_TYPE, existing_nullable=False, comment=INIT_COMMENT)
        op.alter_column("trials", "source", existing_type=sa.String(), existing_nullable=True,
                        comment=SOURCE_COMMENT, existing_comment=SOURCE_COMMENT_0003)
    op.execute(RESULTS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS results")
    if _has_comments():
        op.alter_column("trials", "source", existing_type=sa.String(), existing_nullable=True,
                        comment=SOURCE_COMMENT_0003, existing_comment=SOURCE_COMMENT)
    with op.batch_alter_table("trials", recreate=_recreate()) as batch:
        batch.drop_index(op.f("ix_trials_init"))
        batch.drop_constraint(op.f("ck_trials_init"), type_="check")
        batch.drop_column("init")
    op.execute(RESULTS_VIEW_0001)
