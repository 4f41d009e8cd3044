"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "ai_job",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=32), server_default="image_studio", nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("mode", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "result_image_urls",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("api_base", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("api_style", sa.String(length=16), nullable=False),
        sa.Column("provider_key", sa.String(length=64), nullable=False),
        sa.Column("out_width", sa.Integer(), nullable=False),
        sa.Column("out_height", sa.Integer(), nullable=False),
        sa.Column("out_format", sa.String(length=8), nullable=False),
        sa.Column("out_quality", sa.Integer(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("sku_serial", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_job")),
        sa.UniqueConstraint("user_id", "job_id", name=op.f("uq_ai_job_user_id_job_id")),
    )
    with op.batch_alter_table("ai_job", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_job_type_created_at"), ["type", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_ai_job_user_id_created_at"), ["user_id", "created_at"], unique=False
        )

    op.create_table(
        "provider_governor",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("api_base", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("window", sa.Float(), nullable=False),
        sa.Column("ssthresh", sa.Float(), nullable=True),
        sa.Column("ceiling", sa.Float(), nullable=True),
        sa.Column("hold_until", sa.Float(), server_default="0", nullable=False),
        sa.Column("epoch", sa.Float(), server_default="0", nullable=False),
        sa.Column("cooldown_until", sa.Float(), server_default="0", nullable=False),
        sa.Column("rate", sa.Float(), nullable=True),
        sa.Column("tat", sa.Float(), server_default="0", nullable=False),
        sa.Column("latency", sa.Float(), nullable=True),
        sa.Column("base_latency", sa.Float(), nullable=True),
        sa.Column("rate_limited", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pinned_window", sa.Float(), nullable=True),
        sa.Column("pinned_rate", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_provider_governor")),
    )
    op.create_table(
        "ai_job_attempt",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("image_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fence", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("call_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("call_ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("wait_seconds", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_job.id"],
            name=op.f("fk_ai_job_attempt_job_pk_ai_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_job_attempt")),
    )
    with op.batch_alter_table("ai_job_attempt", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_job_attempt_job_pk_started_at"),
            ["job_pk", "started_at"],
            unique=False,
        )

    op.create_table(
        "ai_job_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_job.id"],
            name=op.f("fk_ai_job_event_job_pk_ai_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_job_event")),
    )
    with op.batch_alter_table("ai_job_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_job_event_job_pk_id"), ["job_pk", "id"], unique=False
        )

    op.create_table(
        "ai_job_image",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=200), nullable=False),
        sa.Column("sku_index", sa.Integer(), nullable=False),
        sa.Column("stem", sa.String(length=300), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("source_url", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("snoozes", sa.Integer(), server_default="0", nullable=False),
        sa.Column("billed_timeouts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("fence", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("call_ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_key", sa.Text(), nullable=True),
        sa.Column("result_url", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_job.id"],
            name=op.f("fk_ai_job_image_job_pk_ai_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_job_image")),
        sa.UniqueConstraint("job_pk", "position", name=op.f("uq_ai_job_image_job_pk_position")),
    )
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_job_image_job_pk_status"), ["job_pk", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_ai_job_image_status_run_after"), ["status", "run_after"], unique=False
        )

    op.create_table(
        "ai_job_secret",
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("api_key_enc", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_job.id"],
            name=op.f("fk_ai_job_secret_job_pk_ai_job"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_pk", name=op.f("pk_ai_job_secret")),
    )


def downgrade() -> None:

    op.drop_table("ai_job_secret")
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_image_status_run_after"))
        batch_op.drop_index(batch_op.f("ix_ai_job_image_job_pk_status"))

    op.drop_table("ai_job_image")
    with op.batch_alter_table("ai_job_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_event_job_pk_id"))

    op.drop_table("ai_job_event")
    with op.batch_alter_table("ai_job_attempt", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_attempt_job_pk_started_at"))

    op.drop_table("ai_job_attempt")
    op.drop_table("provider_governor")
    with op.batch_alter_table("ai_job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_job_user_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_ai_job_type_created_at"))

    op.drop_table("ai_job")
