"""trials.claim_host / claim_pid / claim_pid_start: the process that holds a trial's claim

Revision ID: 0006
Revises: 0004er (ER protocol)
Create Date: 2026-12-01

A claim records where its driver runs: the host name, the process id and that process's start
time (clock ticks after boot, which tells a reused process id apart). A claim whose driver ran on
this host and whose process is gone is dead and is taken over at once; one whose process is alive
is never taken over, whatever --stale-after says. Claims from other hosts still expire by heartbeat.
Plain ADD COLUMNs: SQLite keeps the results view and the data in place. Never edit a revision after
it has landed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0004er"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A literal copy of db/models.py at this revision (a revision is a frozen snapshot).
COLUMNS: list[tuple[str, sa.types.TypeEngine[Any], str]] = [
    ("claim_host", sa.String(length=255), "host name of the driver process that holds the claim; NULL = no claim"),
    ("claim_pid", sa.Integer(), "process id of the driver that holds the claim (on claim_host)"),
    ("claim_pid_start", sa.BigInteger(),
     "start time of that process in clock ticks after boot (tells a reused process id apart); NULL = unknown"),
]


def upgrade() -> None:
    for name, type_, comment in COLUMNS:
        op.add_column("trials", sa.Column(name, type_, nullable=True, comment=comment))


def downgrade() -> None:
    for name, *_ in reversed(COLUMNS):
        # Both PostgreSQL and SQLite >= 3.35 drop a column in place: no table rebuild under the view.
        op.execute(f"ALTER TABLE trials DROP COLUMN {name}")
