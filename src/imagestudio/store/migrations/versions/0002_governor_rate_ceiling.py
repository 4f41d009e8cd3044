"""governor: the learned pace's ceiling

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("provider_governor", sa.Column("rate_ceiling", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("provider_governor") as batch:
        batch.drop_column("rate_ceiling")
