"""What a user does to a job after submitting it: cancel it, retry its failed images (bringing
the API key again, maybe a new one). Each locks the job row first (PostgreSQL), rolls the job
up and appends a ``job`` event, in one transaction; the images they move shift the job's
counts (``store.counts``) in the roll-up's one UPDATE of the job row.

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import TERMINAL_JOB_STATUSES, ImageStatus
from imagestudio.errors import ApiKeyRequired
from imagestudio.store import governors, jobs, outbox
from imagestudio.store.tables import ai_job, ai_job_attempt, ai_job_image, ai_job_secret

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value
FAILED, CANCELLED = ImageStatus.FAILED.value, ImageStatus.CANCELLED.value


async def cancel(conn: AsyncConnection, job_pk: str, now: datetime) -> str:
    """Cancel a job: queued and running images end ``cancelled`` now (a running attempt's
    worker sees its lease gone at its next heartbeat and aborts the call); images already
    done are kept. Idempotent; a job that already ended is left as it is."""
    img, att = ai_job_image, ai_job_attempt
    await jobs.lock(conn, job_pk)
    status = await conn.scalar(select(ai_job.c.status).where(ai_job.c.id == job_pk))
    if status in TERMINAL_JOB_STATUSES:
        return str(status)
    moved: dict[str, int] = {}
    for before in (QUEUED, RUNNING):  # one statement each: its row count is that status's move
        result = await conn.execute(
            update(img)
            .where(img.c.job_pk == job_pk, img.c.status == before)
            .values(
                status=CANCELLED,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
                error="cancelled",
                error_kind="Cancelled",
            )
        )
        moved[before] = -result.rowcount
        moved[CANCELLED] = moved.get(CANCELLED, 0) + result.rowcount
    await conn.execute(
        update(att)
        .where(att.c.job_pk == job_pk, att.c.ended_at.is_(None))
        .values(ended_at=now, outcome="cancelled")
    )
    rolled = await jobs.rollup(conn, job_pk, now, moved, cancel_requested=True)
    data: dict[str, Any] = {"status": rolled.status, "action": "cancel"}
    if rolled.ended:
        data["job_ended"] = True
    await outbox.append(conn, now, [(job_pk, "job", data)])
    return rolled.status


async def retry_failed(
    conn: AsyncConnection,
    job_pk: str,
    *,
    sealed_key: bytes | None,
    new_key: str | None,
    defaults: governors.Defaults,
    now: datetime,
) -> int:
    """Queue the job's failed images again with a fresh attempt budget; returns how many.

    The key was erased when the job ended, so a retry brings it again (``sealed_key``,
    ``new_key`` for the provider key); without one it raises ``ApiKeyRequired``.
    """
    img = ai_job_image
    await jobs.lock(conn, job_pk)
    failed = await conn.scalar(
        select(func.count()).where(img.c.job_pk == job_pk, img.c.status == FAILED)
    )
    if not failed:
        return 0
    await _rekey(conn, job_pk, sealed_key, new_key, defaults, now)
    result = await conn.execute(
        update(img)
        .where(img.c.job_pk == job_pk, img.c.status == FAILED)
        .values(
            status=QUEUED,
            attempts=0,
            snoozes=0,
            billed_timeouts=0,
            first_started_at=None,
            finished_at=None,
            error=None,
            error_kind=None,
            run_after=now,
            updated_at=now,
        )
    )
    requeued = int(result.rowcount)
    moved = {FAILED: -requeued, QUEUED: requeued}
    rolled = await jobs.rollup(conn, job_pk, now, moved, cancel_requested=False, error=None)
    data = {"status": rolled.status, "action": "retry", "requeued": requeued}
    await outbox.append(conn, now, [(job_pk, "job", data)])
    return requeued


async def _rekey(
    conn: AsyncConnection,
    job_pk: str,
    sealed_key: bytes | None,
    new_key: str | None,
    defaults: governors.Defaults,
    now: datetime,
) -> None:
    """Store the key the retry brought (and its provider key and governor), or check the
    job still has one."""
    has_key = await conn.scalar(
        select(ai_job_secret.c.job_pk).where(ai_job_secret.c.job_pk == job_pk)
    )
    if sealed_key is None or new_key is None:
        if has_key is None:
            raise ApiKeyRequired(
                "the job's API key was erased when it ended; send it again as api_key"
            )
        return
    query = select(ai_job.c.api_base, ai_job.c.model).where(ai_job.c.id == job_pk)
    job = (await conn.execute(query)).one()
    key = governors.provider_key(job.api_base, new_key, job.model)
    await conn.execute(ai_job_secret.delete().where(ai_job_secret.c.job_pk == job_pk))
    await conn.execute(ai_job_secret.insert().values(job_pk=job_pk, api_key_enc=sealed_key))
    await conn.execute(update(ai_job).where(ai_job.c.id == job_pk).values(provider_key=key))
    await governors.ensure(
        conn, key=key, api_base=job.api_base, model=job.model, defaults=defaults, now=now
    )
