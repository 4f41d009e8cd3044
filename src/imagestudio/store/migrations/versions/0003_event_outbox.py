"""event outbox: each event's transaction id, and the consumers' cursors

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``ai_job_event.tx`` is the writing transaction's id on PostgreSQL (0 on SQLite, and on the
events written before this migration, which therefore come first in the outbox's order).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ai_job_event", sa.Column("tx", sa.BigInteger(), server_default="0", nullable=False)
    )
    with op.batch_alter_table("ai_job_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ai_job_event_tx_id"), ["tx", "id"], unique=False)
    op.create_table(
        "event_cursor",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("last_tx", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_event_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_event_cursor")),
    )


def downgrade() -> None:
    op.drop_table("event_cursor")
    with op.batch_alter_table("ai_job_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_event_tx_id"))
        batch_op.drop_column("tx")
