"""The task queue: claim (admission, lease, rescue of lost leases) and the lease's upkeep.

A claim is one transaction, serialized against every other claim: on PostgreSQL by one
transaction-level advisory lock (``pg_advisory_xact_lock(CLAIM_LOCK_KEY)``), on SQLite by the
database lock every writer takes with ``BEGIN IMMEDIATE``. No other claim starts a task
meanwhile, so the running counts the claim query reads can only fall under it (an attempt
ending, a cancel), never rise: per-job caps, fairness and each provider key's window hold
across every worker process and machine. What an attempt ends with is in ``store.outcomes``.

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus, JobStatus
from imagestudio.policy.governor import GovernorParams
from imagestudio.policy.pace import apply_pace
from imagestudio.store import governors, jobs, outbox
from imagestudio.store.claim_sql import CLAIM_LOCK_KEY, claim_candidates, claim_params
from imagestudio.store.records import Claim, ClaimedTask
from imagestudio.store.rows import claimed
from imagestudio.store.tables import ai_job, ai_job_attempt, ai_job_image, provider_governor

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value


async def claim_batch(
    conn: AsyncConnection,
    clock: Callable[[], datetime],
    params: GovernorParams,
    *,
    worker: str,
    limit: int,
    lease_seconds: float,
) -> Claim:
    """Lease up to ``limit`` tasks that may start now, fairest first (``claim_sql``),
    within each provider key's window, pace and cooldown (``policy.governor``, ``policy.pace``).

    This is the one place that decides "may this task start now?". Expired leases are
    rescued first, in the same transaction, so nothing stays ``running`` after a crash.
    ``wake_at`` says when something held back may start (a pace slot, a cooldown's end,
    a retry coming due), so an idle worker can sleep exactly that long.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
    now = clock()  # read once the lock is held: waiting for it takes time
    await _rescue_expired(conn, now)
    ids, wake_at = await _admit(conn, params, now, limit)
    if not ids:
        return Claim([], wake_at)
    rows = list((await conn.execute(_lease(ids, worker, now, lease_seconds))).all())
    job_pks = sorted({r.job_pk for r in rows})
    await conn.execute(
        update(ai_job)
        .where(ai_job.c.id.in_(job_pks), ai_job.c.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.RUNNING.value, updated_at=now)
    )
    await conn.execute(ai_job_attempt.insert(), [_attempt_row(r, worker, now) for r in rows])
    await outbox.append(conn, now, [(r.job_pk, "image", _running_event(r)) for r in rows])
    by_pk = await jobs.jobs_by_pk(conn, job_pks)
    order = {image_id: i for i, image_id in enumerate(ids)}
    rows.sort(key=lambda r: order[r.id])
    return Claim([claimed(r, by_pk[r.job_pk]) for r in rows], wake_at)


async def _admit(
    conn: AsyncConnection, params: GovernorParams, now: datetime, limit: int
) -> tuple[list[int], float | None]:
    """The ids to lease, fairest first within each key's window and pace, and when to wake."""
    query = claim_candidates(params.initial_window)
    found = await conn.execute(query, claim_params(now, limit * 3 + 8))
    candidates = [(int(r[0]), str(r[1])) for r in found.all()]
    states = await governors.load(conn, {key for _, key in candidates}, lock=True)
    paced = apply_pace(candidates, states, now.timestamp(), limit)
    for key, tat in paced.tats.items():
        await governors.save(conn, key, dataclasses.replace(states[key], tat=tat), now)
    wake = [t for t in (paced.wake_at, await _next_due(conn, now)) if t is not None]
    return paced.ids, min(wake) if wake else None


async def _next_due(conn: AsyncConnection, now: datetime) -> float | None:
    """When the next waiting task or cooled-down key becomes startable (epoch seconds)."""
    img, gov = ai_job_image, provider_governor
    due = await conn.scalar(
        select(func.min(img.c.run_after)).where(img.c.status == QUEUED, img.c.run_after > now)
    )
    cooled = await conn.scalar(
        select(func.min(gov.c.cooldown_until)).where(gov.c.cooldown_until > now.timestamp())
    )
    times = [t for t in (due.timestamp() if due else None, cooled) if t is not None]
    return min(times) if times else None


def _lease(ids: list[int], worker: str, now: datetime, lease_seconds: float) -> Any:
    img = ai_job_image
    return (
        update(img)
        .where(img.c.id.in_(ids), img.c.status == QUEUED)  # cancelled meanwhile: skip it
        .values(
            status=RUNNING,
            call_ended_at=None,
            fence=img.c.fence + 1,
            attempts=img.c.attempts + 1,
            calls=img.c.calls + 1,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            first_started_at=func.coalesce(img.c.first_started_at, now),
            updated_at=now,
        )
        .returning(img)
    )


async def _rescue_expired(conn: AsyncConnection, now: datetime) -> None:
    """Put tasks whose worker died (lease expired) back in the queue; their attempt counts."""
    img, att = ai_job_image, ai_job_attempt
    lost = (
        await conn.execute(
            update(img)
            .where(img.c.status == RUNNING, img.c.lease_expires_at < now)
            .values(
                status=QUEUED,
                lease_owner=None,
                lease_expires_at=None,
                run_after=now,
                error="worker lost (lease expired)",
                error_kind="LeaseExpired",
                updated_at=now,
            )
            .returning(img.c.id, img.c.fence)
        )
    ).all()
    for image_id, fence in lost:
        await conn.execute(
            update(att)
            .where(att.c.image_id == image_id, att.c.fence == fence, att.c.ended_at.is_(None))
            .values(ended_at=now, outcome="lost", error="worker lost (lease expired)")
        )


def _attempt_row(row: Row[Any], worker: str, now: datetime) -> dict[str, Any]:
    return {
        "job_pk": row.job_pk,
        "image_id": row.id,
        "fence": row.fence,
        "worker": worker,
        "started_at": now,
    }


def _running_event(row: Row[Any]) -> dict[str, Any]:
    return {
        "position": row.position,
        "sku": row.sku,
        "stem": row.stem,
        "status": RUNNING,
        "attempt": row.attempts,
    }


# -- the lease's upkeep -----------------------------------------------------------------------


async def still_held(conn: AsyncConnection, task: ClaimedTask) -> bool:
    """Whether this attempt still owns its task (checked right before a provider call)."""
    img = ai_job_image
    found = await conn.scalar(
        select(img.c.id).where(
            img.c.id == task.image_id, img.c.fence == task.fence, img.c.status == RUNNING
        )
    )
    return found is not None


async def heartbeat(
    conn: AsyncConnection, worker: str, image_ids: Sequence[int], until: datetime
) -> set[tuple[int, int]]:
    """Extend this worker's leases to ``until``; the ``(image id, fence)`` attempts it holds.

    An attempt missing from the answer was cancelled, taken over, or superseded by a newer
    attempt of the same image: the worker stops it.
    """
    img = ai_job_image
    stmt = (
        update(img)
        .where(img.c.id.in_(list(image_ids)), img.c.lease_owner == worker, img.c.status == RUNNING)
        .values(lease_expires_at=until)
        .returning(img.c.id, img.c.fence)
    )
    return {(int(r[0]), int(r[1])) for r in (await conn.execute(stmt)).all()}


async def release(conn: AsyncConnection, task: ClaimedTask, now: datetime) -> None:
    """Give a task back unfinished (worker draining): queued again, attempt not counted."""
    img = ai_job_image
    await conn.execute(
        update(img)
        .where(img.c.id == task.image_id, img.c.fence == task.fence, img.c.status == RUNNING)
        .values(
            status=QUEUED,
            lease_owner=None,
            lease_expires_at=None,
            run_after=now,
            attempts=img.c.attempts - 1,
            updated_at=now,
        )
    )
    await conn.execute(
        update(ai_job_attempt)
        .where(ai_job_attempt.c.image_id == task.image_id, ai_job_attempt.c.fence == task.fence)
        .values(ended_at=now, outcome="released")
    )


async def has_pending(conn: AsyncConnection) -> bool:
    """Whether any image is queued or running (due now or later)."""
    found = await conn.scalar(
        select(ai_job_image.c.id).where(ai_job_image.c.status.in_([QUEUED, RUNNING])).limit(1)
    )
    return found is not None
