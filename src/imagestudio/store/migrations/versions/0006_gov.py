"""governor: the cooldown's cause, the evidence that tells a concurrency limit from a rate
limit (the most calls in flight, and the most starts in the last 1, 10 and 60 seconds, that a
call was accepted with since the last decrease), the window a header's limit is per, the
pace's own hold, and whether the window's ceiling was told by that evidence

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("ok_in_flight", "ok_starts_1", "ok_starts_10", "ok_starts_60", "header_window")


def upgrade() -> None:
    with op.batch_alter_table("provider_governor") as batch:
        batch.add_column(sa.Column("cooldown_cause", sa.Text(), nullable=True))
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.add_column(
            sa.Column("rate_hold_until", sa.Float(), server_default="0", nullable=False)
        )
        batch.add_column(
            sa.Column("ceiling_confirmed", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("provider_governor") as batch:
        for name in ("cooldown_cause", *COLUMNS, "rate_hold_until", "ceiling_confirmed"):
            batch.drop_column(name)
