"""A job's budget (``options.max_cost``): an attempt reserves an estimate of its call before
it starts it, and may start only if the job stays at or under its cap (``policy.cost``).

Kept out of the claim: only attempts of jobs with a ``max_cost`` come here, once each, right
before their provider call. The reservation is the running image's ``cost_reserved``; what is
reserved is the sum over the job's *running* images, so a crashed worker's reservation lapses
with its lease (its image is queued again or cancelled), with nothing to clean up. The job row
is locked (PostgreSQL; SQLite's writers are serialized) so two attempts cannot both take the
last of the budget. ``outcomes.finish`` clears the reservation and adds the actual cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus
from imagestudio.policy.cost import Price, budget_message, call_estimate, may_start
from imagestudio.store import jobs
from imagestudio.store.records import ClaimedTask
from imagestudio.store.tables import ai_job, ai_job_image

RUNNING = ImageStatus.RUNNING.value


@dataclass(frozen=True, slots=True)
class Reserved:
    estimate: float


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


async def reserve(
    conn: AsyncConnection, task: ClaimedTask, price: Price | None
) -> Reserved | Refused:
    """Reserve the estimate of ``task``'s next call against its job's ``max_cost``."""
    await jobs.lock(conn, task.job_pk)
    job = (
        await conn.execute(
            select(ai_job.c.max_cost, ai_job.c.cost, ai_job.c.cost_call_max).where(
                ai_job.c.id == task.job_pk
            )
        )
    ).one()
    img = ai_job_image
    reserved = await conn.scalar(
        select(func.coalesce(func.sum(img.c.cost_reserved), 0.0)).where(
            img.c.job_pk == task.job_pk,
            img.c.status == RUNNING,
            img.c.id != task.image_id,
        )
    )
    estimate = call_estimate(price, job.cost_call_max)
    if job.max_cost is None:
        return Reserved(0.0)
    spent, held = float(job.cost or 0.0), float(reserved or 0.0)
    if not may_start(job.max_cost, spent, held, estimate):
        return Refused(budget_message(job.max_cost, spent, held, estimate))
    await conn.execute(
        update(img)
        .where(img.c.id == task.image_id, img.c.fence == task.fence)
        .values(cost_reserved=estimate)
    )
    return Reserved(estimate)
