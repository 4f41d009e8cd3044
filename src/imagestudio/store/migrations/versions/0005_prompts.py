"""prompts: each of a job's prompts stored once (``ai_job_prompt``), images point at theirs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

A job sends at most a few distinct prompts (its main images' and the others'), but every image
row held its own copy: a 1 MB prompt on 1,000 images was 1 GB of database. The distinct texts
of each job move to ``ai_job_prompt``, numbered by first use in payload order, and
``ai_job_image.prompt`` becomes ``prompt_idx``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_job_prompt",
        sa.Column("job_pk", sa.String(length=36), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_pk"], ["ai_job.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_pk", "idx"),
    )
    op.execute(
        "INSERT INTO ai_job_prompt (job_pk, idx, text) "
        "SELECT job_pk, ROW_NUMBER() OVER (PARTITION BY job_pk ORDER BY first_use) - 1, prompt "
        "FROM (SELECT job_pk, prompt, MIN(position) AS first_use FROM ai_job_image "
        "GROUP BY job_pk, prompt) AS used"
    )
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("prompt_idx", sa.Integer(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE ai_job_image SET prompt_idx = (SELECT idx FROM ai_job_prompt "
        "WHERE ai_job_prompt.job_pk = ai_job_image.job_pk "
        "AND ai_job_prompt.text = ai_job_image.prompt)"
    )
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.drop_column("prompt")


def downgrade() -> None:
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prompt", sa.Text(), server_default="", nullable=False))
    op.execute(
        "UPDATE ai_job_image SET prompt = (SELECT text FROM ai_job_prompt "
        "WHERE ai_job_prompt.job_pk = ai_job_image.job_pk "
        "AND ai_job_prompt.idx = ai_job_image.prompt_idx)"
    )
    with op.batch_alter_table("ai_job_image", schema=None) as batch_op:
        batch_op.drop_column("prompt_idx")
    op.drop_table("ai_job_prompt")
