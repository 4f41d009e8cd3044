"""The reads behind ``waiting_reason``: the claim's own view (``claim.read_view``, no locks)
plus, for a page of a job's images, each queued image's SKU blocker and how many of its job's
queued images come before it; ``policy.waiting.explain`` turns them into words.

Cost: the claim's view (bounded by active jobs x heads + running tasks) and two reads of the
``(job_pk, status, position)`` index for the page; nothing of it is O(queued images).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus
from imagestudio.policy import fairness, waiting
from imagestudio.store import claim
from imagestudio.store.records import ImageRecord, JobRecord
from imagestudio.store.tables import ai_job_image

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value


async def reasons(
    conn: AsyncConnection,
    job: JobRecord,
    images: Sequence[ImageRecord],
    *,
    now: datetime,
    limit: int,
    initial_window: float,
) -> dict[int, waiting.Reason]:
    """Why each queued image of ``images`` (one page of ``job``) has not started."""
    page = [i for i in images if i.status == QUEUED]
    if not page:
        return {}
    view, states = await claim.read_view(conn, now, limit)
    blockers = await _blockers(conn, job, page) if job.sku_serial else {}
    before = await _queued_before(conn, job.id, page[0].position)
    asks = []
    for n, image in enumerate(page):
        asks.append(
            waiting.Queued(
                id=image.id,
                position=image.position,
                run_after=image.run_after.timestamp(),
                error_kind=image.error_kind,
                blocker=blockers.get(image.id),
                ahead_in_job=before + n,
            )
        )
    return waiting.explain(
        _fair_job(job),
        asks,
        view,
        states,
        now=now.timestamp(),
        limit=limit,
        initial_window=initial_window,
    )


def _fair_job(job: JobRecord) -> fairness.Job:
    return fairness.Job(
        job.id,
        job.user_id,
        job.created_at.timestamp(),
        job.provider_key,
        job.max_concurrency,
        job.sku_serial,
        job.cancel_requested,
    )


async def _queued_before(conn: AsyncConnection, job_pk: str, position: int) -> int:
    img = ai_job_image
    query = select(func.count()).where(
        img.c.job_pk == job_pk, img.c.status == QUEUED, img.c.position < position
    )
    return int(await conn.scalar(query) or 0)


async def _blockers(
    conn: AsyncConnection, job: JobRecord, page: Sequence[ImageRecord]
) -> dict[int, str]:
    """Per queued image of a ``sku_serial`` job, the stem of the first image of its SKU still
    queued or running, when that one comes before it (intake lays SKUs out contiguously)."""
    img = ai_job_image
    skus = sorted({i.sku for i in page})
    first = (
        select(img.c.sku, func.min(img.c.position).label("position"))
        .where(img.c.job_pk == job.id, img.c.status.in_([QUEUED, RUNNING]), img.c.sku.in_(skus))
        .group_by(img.c.sku)
        .subquery()
    )
    query = select(first.c.sku, first.c.position, img.c.stem).join(
        img, (img.c.job_pk == job.id) & (img.c.position == first.c.position)
    )
    heads = {str(sku): (int(pos), str(stem)) for sku, pos, stem in (await conn.execute(query))}
    found: dict[int, str] = {}
    for image in page:
        head = heads.get(image.sku)
        if head is not None and head[0] < image.position:
            found[image.id] = head[1]
    return found
