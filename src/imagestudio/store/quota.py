"""A user's work in flight, for admission at submit (``policy.quota``): one read of the job
rows' counts, over the ``(user_id, created_at)`` index."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import JobStatus
from imagestudio.policy.quota import InFlight
from imagestudio.store.tables import ai_job

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


async def in_flight(conn: AsyncConnection, user_id: str) -> InFlight:
    job = ai_job.c
    row = (
        await conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(job.n_queued + job.n_running), 0),
            ).where(job.user_id == user_id, job.status.in_(ACTIVE))
        )
    ).one()
    return InFlight(jobs=int(row[0]), images=int(row[1]))
