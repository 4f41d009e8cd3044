"""Whose job a stored result belongs to (the files route's check with API tokens set)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.store.tables import ai_job


async def job_owner(conn: AsyncConnection, job_pk: str) -> str | None:
    """The user of the job with primary key ``job_pk``; None if there is none."""
    found = await conn.execute(select(ai_job.c.user_id).where(ai_job.c.id == job_pk))
    owner = found.scalar_one_or_none()
    return None if owner is None else str(owner)
