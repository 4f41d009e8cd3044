"""scale: per-job image counts by status, the job's last start, per-job heads in order

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``ai_job.n_<status>`` count the job's images by status (kept by ``store.counts``), filled here
from the images already there; ``last_started_at`` and ``urls_refreshed_at`` likewise. The
index ``(job_pk, status)`` becomes ``(job_pk, status, position)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("ai_job", schema=None) as batch_op:
        for status in STATUSES:
            batch_op.add_column(
                sa.Column(f"n_{status}", sa.Integer(), server_default="0", nullable=False)
            )
        batch_op.add_column(sa.Column("last_started_at", UTC_DATETIME, nullable=True))
        batch_op.add_column(sa.Column("urls_refreshed_at", UTC_DATETIME, nullable=True))
        batch_op.create_index(
            batch_op.f("ix_ai_job_status_created_at"), ["status", "created_at"], unique=False
        )
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_job_image_job_pk_status")
        batch_op.create_index(
            batch_op.f("ix_ai_job_image_job_pk_status_position"),
            ["job_pk", "status", "position"],
            unique=False,
        )
    for status in STATUSES:
        op.execute(
            f"UPDATE ai_job SET n_{status} = (SELECT count(*) FROM ai_job_image "
            f"WHERE ai_job_image.job_pk = ai_job.id AND ai_job_image.status = '{status}')"
        )
    op.execute(
        "UPDATE ai_job SET last_started_at = (SELECT max(started_at) FROM ai_job_image "
        "WHERE ai_job_image.job_pk = ai_job.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_image_job_pk_status_position"))
        batch_op.create_index("ix_ai_job_image_job_pk_status", ["job_pk", "status"], unique=False)
    with op.batch_alter_table("ai_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_status_created_at"))
        batch_op.drop_column("urls_refreshed_at")
        batch_op.drop_column("last_started_at")
        for status in reversed(STATUSES):
            batch_op.drop_column(f"n_{status}")
