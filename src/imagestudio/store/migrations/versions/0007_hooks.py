"""hooks: usage and estimated cost per attempt, image and job; a job's budget; webhooks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Attempts record what the provider said it used (``usage``) and its estimated cost; images and
jobs keep the sums (``outcomes.finish``), so reads never add up a big job's attempts.
``ai_job.max_cost`` is the job's optional budget, the running images' ``cost_reserved`` the
estimates of their calls under way. ``ai_job_webhook`` holds a job's sealed webhook endpoint;
``webhook_delivery`` one message to it, with its tries.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _sums() -> list[sa.Column[int] | sa.Column[float]]:
    return [
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost", sa.Float(), server_default="0", nullable=False),
    ]


def upgrade() -> None:
    with op.batch_alter_table("ai_job", schema=None) as batch_op:
        for column in _sums():
            batch_op.add_column(column)
        batch_op.add_column(sa.Column("max_cost", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cost_call_max", sa.Float(), nullable=True))
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        for column in _sums():
            batch_op.add_column(column)
        batch_op.add_column(sa.Column("cost_reserved", sa.Float(), nullable=True))
    with op.batch_alter_table("ai_job_attempt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_text_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("input_image_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("output_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))
    op.create_table(
        "ai_job_webhook",
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("url_enc", sa.LargeBinary(), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("image_events", sa.Boolean(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_job.id"],
            name=op.f("fk_ai_job_webhook_job_pk_ai_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_pk", name=op.f("pk_ai_job_webhook")),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", UTC_DATETIME, nullable=False),
        sa.Column("lease_until", UTC_DATETIME, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("delivered_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_job.id"],
            name=op.f("fk_webhook_delivery_job_pk_ai_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
        sa.UniqueConstraint("event_id", "type", name=op.f("uq_webhook_delivery_event_id_type")),
        sa.UniqueConstraint("msg_id", name=op.f("uq_webhook_delivery_msg_id")),
    )
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_delivery_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_webhook_delivery_job_pk_id"), ["job_pk", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_delivery_job_pk_id"))
        batch_op.drop_index(batch_op.f("ix_webhook_delivery_status_next_attempt_at"))
    op.drop_table("webhook_delivery")
    op.drop_table("ai_job_webhook")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not batch mode: a batch rebuild of
    # ai_job on SQLite drops the table, and with foreign keys on that deletes every image.
    columns = {
        "ai_job_attempt": ("cost", "output_tokens", "input_image_tokens", "input_text_tokens"),
        "ai_job_image": ("cost_reserved", "cost", "output_tokens", "input_tokens"),
        "ai_job": ("cost_call_max", "max_cost", "cost", "output_tokens", "input_tokens"),
    }
    for table, names in columns.items():
        for name in names:
            op.drop_column(table, name)
