"""ER baselines keyed by the evaluation protocol and testbed; every ER value records its baseline

Revision ID: 0004er
Revises: 0004 (trials.init)
Create Date: 2026-11-26

er_baselines gains input_size, protocol_json, protocol_key (canonical JSON of both), the slope's
95% CI and a testbed description; its UNIQUE (id_dataset, ood_dataset) becomes UNIQUE (id_dataset,
ood_dataset, protocol_key, fitted_from). trials.er_baseline_id and epoch_metrics.er_baseline_id
(FK er_baselines.id) record the baseline behind each ER value.

Existing rows: a baseline keeps input_size NULL, protocol '{}' (the key '{"input_size":null}'),
unknown CI and testbed. An existing ER value is linked to the baseline of its trial's (dataset, ood):
unambiguous, since before this revision there was at most one per pair.

trials and epoch_metrics gain their column with a plain ADD COLUMN (no table copy: SQLite keeps the
results view and the data in place). Never edit a revision after it has landed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004er"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_KEY = '{"input_size":null}'
ER_BASELINE_COMMENT = "er_baselines.id: the baseline that produced er (NULL when er is NULL)"
# A literal copy of db/models.py at this revision (a revision is a frozen snapshot).
COLUMNS: list[tuple[str, sa.types.TypeEngine[Any], str, str | None]] = [
    ("input_size", sa.Integer(),
     "model input side in pixels of the protocol (spec param input_size); NULL = the kernel default", None),
    ("protocol_json", sa.Text(),
     "the protocol's generator parameters (spec params num_classes, train_images, augment, eval_images) "
     "as JSON; {} = all defaults", "{}"),
    ("protocol_key", sa.String(),
     "canonical JSON of input_size and protocol_json: the protocol part of the unique key", DEFAULT_KEY),
    ("slope_ci_low", sa.Double(),
     "lower end of the slope's 95% CI (OLS standard error, Student t); NULL = unknown", None),
    ("slope_ci_high", sa.Double(),
     "upper end of the slope's 95% CI (OLS standard error, Student t); NULL = unknown", None),
    ("testbed", sa.Text(), "what the testbed was, in words", None),
]
LINKED = ("trials", "epoch_metrics")


def upgrade() -> None:
    with op.batch_alter_table("er_baselines") as batch:
        batch.drop_constraint("uq_er_baselines_id_dataset_ood_dataset", type_="unique")
        for name, type_, comment, default in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=default is None, server_default=default,
                                       comment=comment))
        batch.create_unique_constraint(
            "uq_er_baselines_id_dataset_ood_dataset_protocol_key_fitted_from",
            ["id_dataset", "ood_dataset", "protocol_key", "fitted_from"],
        )
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in LINKED:
        fk = f"fk_{table}_er_baseline_id_er_baselines"
        if sqlite:  # a column-level REFERENCES is the one FK SQLite adds in place
            op.execute(f"ALTER TABLE {table} ADD COLUMN er_baseline_id INTEGER "
                       f"CONSTRAINT {fk} REFERENCES er_baselines (id)")
        else:
            op.add_column(table, sa.Column("er_baseline_id", sa.Integer(), nullable=True,
                                           comment=ER_BASELINE_COMMENT))
            op.create_foreign_key(fk, table, "er_baselines", ["er_baseline_id"], ["id"])
    op.execute("UPDATE trials SET er_baseline_id = (SELECT b.id FROM er_baselines b WHERE "
               "b.id_dataset = trials.dataset AND b.ood_dataset = trials.ood) WHERE er IS NOT NULL")
    op.execute("UPDATE epoch_metrics SET er_baseline_id = (SELECT b.id FROM er_baselines b JOIN trials t ON "
               "b.id_dataset = t.dataset AND b.ood_dataset = t.ood WHERE t.id = epoch_metrics.trial_id) "
               "WHERE er IS NOT NULL")


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in LINKED:
        if not sqlite:
            op.drop_constraint(f"fk_{table}_er_baseline_id_er_baselines", table, type_="foreignkey")
        # Both PostgreSQL and SQLite >= 3.35 drop a column in place: no table rebuild under the view.
        op.execute(f"ALTER TABLE {table} DROP COLUMN er_baseline_id")
    # Back to one baseline per (ID, OOD): keep the latest of each pair.
    op.execute("DELETE FROM er_baselines WHERE id NOT IN (SELECT max(id) FROM er_baselines "
               "GROUP BY id_dataset, ood_dataset)")
    with op.batch_alter_table("er_baselines") as batch:
        batch.drop_constraint("uq_er_baselines_id_dataset_ood_dataset_protocol_key_fitted_from", type_="unique")
        for name, *_ in reversed(COLUMNS):
            batch.drop_column(name)
        batch.create_unique_constraint("uq_er_baselines_id_dataset_ood_dataset", ["id_dataset", "ood_dataset"])
