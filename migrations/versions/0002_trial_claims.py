"""trials.claimed_by: the driver that queued a trial, so concurrent drivers never run it twice

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

A driver claims the trials it is about to run (pending, failed or abandoned ones) in one
conditional UPDATE; its heartbeat keeps the claim alive, and a claim whose heartbeat is older
than the stale limit can be taken over. Never edit a revision after it has landed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch copy): SQLite keeps the results view and the data in place.
    op.add_column("trials", sa.Column("claimed_by", sa.String(length=64), nullable=True))
    op.create_index(op.f("ix_trials_claimed_by"), "trials", ["claimed_by"])


def downgrade() -> None:
    op.drop_index(op.f("ix_trials_claimed_by"), table_name="trials")
    # Both PostgreSQL and SQLite >= 3.35 drop a column in place: no table rebuild under the view.
    op.execute("ALTER TABLE trials DROP COLUMN claimed_by")
