"""The task queue: claim (admission, lease), rescue of lost leases, and the lease's upkeep.

**A claim** (``claim_batch``, the steps in ``store.claim``, the reads in ``store.claim_sql``)
reads a bounded view of the queue - the unfinished jobs, the running tasks, and per job its
first few due tasks (*heads*, ``policy.fairness.head_limits``) - and decides the fair order
and the admission in Python (``policy.fairness.candidates``, the same rule the pure reference
``pick`` applies to every task). Its cost is O(active jobs x heads + running tasks), whatever
the number of queued tasks. Then, in the same transaction:

1. lock the governor rows of the candidates' keys, ``FOR UPDATE`` in key order, skipping a
   key another claim holds (``SKIP LOCKED``: that claim is serving it; this one takes its
   other candidates); only when every key is held does it wait for them;
2. under those locks read the clock (the tasks' start) and count again the keys' running
   tasks and calls in flight; if they moved since the view was read (another claim started
   tasks of these keys meanwhile), read the view again, now under the locks; drop the
   candidates that do not fit the window or their job's cap, and apply each key's cooldown
   and pace (``policy.pace``) to what is left, saving the new pace;
3. lock the chosen tasks' job rows (``FOR NO KEY UPDATE``, job order, as finish and cancel
   do before touching images) and lease the tasks still queued, skipping rows another
   transaction holds (``FOR UPDATE SKIP LOCKED``): a task someone else took or cancelled is
   not leased twice, it is left out;
4. move the jobs' counts (queued -> running) and ``last_started_at``, insert the attempts,
   append the events.

*Why the limits hold with any number of claimers* (PostgreSQL, no cluster-wide lock): every
claim that starts a task of key K holds K's governor row lock while it counts and leases, so
claims for K are serialized from the count to the commit, and what the count reads can only
fall meanwhile (a call ending, a finish, a cancel). A job has one key, so its cap is exact
too. Claims for different keys lock different rows and never wait on each other; a claim
whose candidates' keys are all held waits for them, in key order, holding nothing else (no
deadlock: every claim takes governor rows, then job rows, then task rows, each in order, and
finish, cancel and retry take a job row before its task rows). The fair order is decided
per claim: two claimers of different keys each rank the queue as they saw it, so fairness
across keys is as fair as each claim's view, not global; a candidate taken meanwhile is
skipped, never leased twice. SQLite takes the same steps under ``BEGIN IMMEDIATE`` (one
writer at a time), so there is nothing to race; its claim is just cheap.

**Rescue** (``rescue_expired``, its own transaction before each claim): tasks whose lease
expired go back to ``queued``, due now; rows another rescuer holds are skipped (``SKIP
LOCKED``), so rescuers never queue up behind each other.

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
What an attempt ends with is in ``store.outcomes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus
from imagestudio.policy import fairness
from imagestudio.policy.governor import GovernorParams
from imagestudio.store import claim, claim_sql, counts, jobs, outbox
from imagestudio.store.records import Claim, ClaimedTask
from imagestudio.store.rows import claimed
from imagestudio.store.tables import ai_job_attempt, ai_job_image, provider_governor

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
    """Lease up to ``limit`` tasks that may start now, fairest first, within each provider
    key's window, pace and cooldown and each job's cap (see the module's docstring).

    This is the one place that decides "may this task start now?". ``wake_at`` says when
    something held back may start (a pace slot, a cooldown's end, a retry coming due), so an
    idle worker can sleep exactly that long. Expired leases are rescued before, by
    ``rescue_expired`` in its own transaction.
    """
    now = clock()
    view, states = await claim.read_view(conn, now, limit)
    found = fairness.candidates(
        view, states, now=now.timestamp(), limit=limit, initial_window=params.initial_window
    )
    admitted = claim.Admission([], None, now)
    if found:
        admitted = await claim.admit(conn, params, view, found, clock, limit)
    wake_at = _earliest(admitted.wake_at, await _next_due(conn, now), await _cooled(conn, now))
    if not admitted.ids:
        return Claim([], wake_at)
    now = admitted.now
    rows = await claim.lease(conn, admitted.ids, worker, now, lease_seconds)
    if not rows:
        return Claim([], wake_at)
    job_pks = sorted({r.job_pk for r in rows})
    await conn.execute(ai_job_attempt.insert(), [_attempt_row(r, worker, now) for r in rows])
    await outbox.append(conn, now, [(r.job_pk, "image", _running_event(r)) for r in rows])
    by_pk = await jobs.jobs_by_pk(conn, job_pks)
    texts = await jobs.prompts(conn, job_pks)
    order = {image_id: i for i, image_id in enumerate(admitted.ids)}
    rows.sort(key=lambda r: order[r.id])
    tasks = [claimed(r, by_pk[r.job_pk], texts[(r.job_pk, r.prompt_idx)]) for r in rows]
    return Claim(tasks, wake_at)


def _earliest(*times: float | None) -> float | None:
    found = [t for t in times if t is not None]
    return min(found) if found else None


async def _next_due(conn: AsyncConnection, now: datetime) -> float | None:
    """When the next waiting task becomes due (epoch seconds)."""
    due = await conn.scalar(claim_sql.next_due(), {"now": now})
    return None if due is None else float(due.timestamp())


async def _cooled(conn: AsyncConnection, now: datetime) -> float | None:
    """When the next cooled-down key may call again (epoch seconds)."""
    gov = provider_governor
    found = await conn.scalar(
        select(func.min(gov.c.cooldown_until)).where(gov.c.cooldown_until > now.timestamp())
    )
    return None if found is None else float(found)


async def rescue_expired(conn: AsyncConnection, now: datetime) -> int:
    """Put tasks whose worker died (lease expired) back in the queue; their attempt counts.

    The job rows are locked first (job order), then the images still expired are taken with
    ``SKIP LOCKED``: a rescuer never waits for another one, and never holds an image while
    waiting for its job (which a cancel, holding the job, could be waiting on).
    """
    img, att = ai_job_image, ai_job_attempt
    expired = (img.c.status == RUNNING) & (img.c.lease_expires_at < now)
    found = (await conn.execute(select(img.c.job_pk).where(expired).distinct())).all()
    if not found:
        return 0
    await claim.lock_jobs(conn, [str(pk) for (pk,) in found])
    still = select(img.c.id).where(expired)
    if conn.dialect.name == "postgresql":
        still = still.with_for_update(skip_locked=True)
    lost = (
        await conn.execute(
            update(img)
            .where(img.c.id.in_(still.scalar_subquery()))
            .values(
                status=QUEUED,
                lease_owner=None,
                lease_expires_at=None,
                run_after=now,
                error="worker lost (lease expired)",
                error_kind="LeaseExpired",
                updated_at=now,
            )
            .returning(img.c.id, img.c.fence, img.c.job_pk)
        )
    ).all()
    for image_id, fence, _ in lost:
        await conn.execute(
            update(att)
            .where(att.c.image_id == image_id, att.c.fence == fence, att.c.ended_at.is_(None))
            .values(ended_at=now, outcome="lost", error="worker lost (lease expired)")
        )
    await counts.shift(conn, counts.moves((pk, RUNNING, QUEUED) for _, _, pk in lost))
    return len(lost)


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
    await jobs.lock(conn, task.job_pk)
    given = await conn.execute(
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
        .returning(img.c.job_pk)
    )
    await counts.shift(conn, counts.moves((pk, RUNNING, QUEUED) for (pk,) in given.all()))
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
