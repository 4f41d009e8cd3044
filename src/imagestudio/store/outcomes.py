"""What an attempt ends with: its provider call's end (the governor learns from it) and its
outcome (succeeded, requeued, failed), written only while the attempt still holds its task.

Every status change shifts the job's counts (``store.counts``) in the same transaction, in
the roll-up's one UPDATE of the job row (``jobs.rollup(..., moved)``).

Fencing: every write names the attempt by ``(image id, fence)``; a claim bumps the fence, so
an attempt whose task was taken over writes nothing. ``finish`` locks the job row first
(PostgreSQL), so concurrent completions of one job roll it up one after the other.

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus
from imagestudio.errors import LeaseLost
from imagestudio.policy.governor import GovernorParams, GovernorState, Observation, observe
from imagestudio.store import governors, jobs, outbox
from imagestudio.store.records import ClaimedTask, Failed, Outcome, Requeue, Succeeded
from imagestudio.store.tables import ai_job, ai_job_attempt, ai_job_image

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value
SUCCEEDED, FAILED = ImageStatus.SUCCEEDED.value, ImageStatus.FAILED.value


async def end_call(
    conn: AsyncConnection,
    task: ClaimedTask,
    *,
    sent_at: float,
    observation: Observation | None,
    params: GovernorParams,
    now: datetime,
) -> GovernorState | None:
    """The task's provider call is over: its slot in the key's window frees (the rest of
    the task, post-processing and storing, no longer counts), the attempt records the
    call's start and end, and the key's governor learns from what the call said."""
    key = task.job.provider_key
    states = await governors.load(conn, [key], lock=True)
    in_flight = await conn.scalar(_calls_in_flight(key))
    await conn.execute(
        update(ai_job_image)
        .where(ai_job_image.c.id == task.image_id, ai_job_image.c.fence == task.fence)
        .values(call_ended_at=now)
    )
    await conn.execute(
        update(ai_job_attempt)
        .where(ai_job_attempt.c.image_id == task.image_id, ai_job_attempt.c.fence == task.fence)
        .values(call_started_at=datetime.fromtimestamp(sent_at, UTC), call_ended_at=now)
    )
    if observation is None or key not in states:
        return None
    observed = dataclasses.replace(observation, in_flight=int(in_flight or 0))
    state = observe(states[key], observed, params)
    await governors.save(conn, key, state, now)
    return state


def _calls_in_flight(key: str) -> Any:
    """Tasks of the key that are in or before their provider call (this one included)."""
    img, job = ai_job_image, ai_job
    return (
        select(func.count())
        .select_from(img.join(job, job.c.id == img.c.job_pk))
        .where(job.c.provider_key == key, img.c.status == RUNNING, img.c.call_ended_at.is_(None))
    )


async def finish(
    conn: AsyncConnection, clock: Callable[[], datetime], task: ClaimedTask, outcome: Outcome
) -> str:
    """Record the attempt's outcome if this attempt still holds the task (fencing).

    Raises ``LeaseLost`` when a newer attempt took the task over; nothing is written then.
    Returns the job's status after the roll-up.
    """
    await jobs.lock(conn, task.job_pk)
    now = clock()  # read once the job's lock is held
    result = await conn.execute(
        update(ai_job_image)
        .where(
            ai_job_image.c.id == task.image_id,
            ai_job_image.c.fence == task.fence,
            ai_job_image.c.status == RUNNING,
        )
        .values(**_outcome_values(outcome, now))
    )
    if result.rowcount != 1:
        raise LeaseLost(f"image {task.image_id} attempt {task.fence} lost its lease")
    moved = {RUNNING: -1, _status_after(outcome): 1}
    await conn.execute(
        update(ai_job_attempt)
        .where(ai_job_attempt.c.image_id == task.image_id, ai_job_attempt.c.fence == task.fence)
        .values(**_attempt_values(outcome, now))
    )
    changes: dict[str, Any] = {}
    if isinstance(outcome, Failed) and outcome.fail_job:
        stopped = await _fail_queued(conn, task.job_pk, outcome, now)
        moved = {RUNNING: -1, QUEUED: -stopped, FAILED: 1 + stopped}
        changes["error"] = outcome.error
    elif isinstance(outcome, Failed):
        changes["last_error"] = outcome.error
    status = await jobs.rollup(conn, task.job_pk, now, moved, **changes)
    await outbox.append(conn, now, [(task.job_pk, "image", _event_data(task, outcome, status))])
    return status


async def _fail_queued(conn: AsyncConnection, job_pk: str, outcome: Failed, now: datetime) -> int:
    """The job stops (a bad key, no quota): its queued images fail with the same reason;
    returns how many (the roll-up moves them in the counts and records the reason)."""
    result = await conn.execute(
        update(ai_job_image)
        .where(ai_job_image.c.job_pk == job_pk, ai_job_image.c.status == QUEUED)
        .values(
            status=ImageStatus.FAILED.value,
            error=outcome.error,
            error_kind=outcome.error_kind,
            finished_at=now,
            updated_at=now,
        )
    )
    return int(result.rowcount)


def _status_after(outcome: Outcome) -> str:
    if isinstance(outcome, Succeeded):
        return SUCCEEDED
    return QUEUED if isinstance(outcome, Requeue) else FAILED


def _outcome_values(outcome: Outcome, now: datetime) -> dict[str, Any]:
    img = ai_job_image
    common: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "updated_at": now}
    if isinstance(outcome, Succeeded):
        return common | {
            "status": ImageStatus.SUCCEEDED.value,
            "result_key": outcome.result_key,
            "result_url": outcome.result_url,
            "error": None,
            "error_kind": None,
            "finished_at": now,
        }
    if isinstance(outcome, Requeue):
        values = common | {
            "status": QUEUED,
            "run_after": outcome.run_after,
            "error": outcome.error,
            "error_kind": outcome.error_kind,
        }
        if not outcome.consumes_attempt:
            values |= {"attempts": img.c.attempts - 1, "snoozes": img.c.snoozes + 1}
        if outcome.billed_timeout:
            values["billed_timeouts"] = img.c.billed_timeouts + 1
        return values
    return common | {
        "status": ImageStatus.FAILED.value,
        "error": outcome.error,
        "error_kind": outcome.error_kind,
        "finished_at": now,
    }


def _attempt_values(outcome: Outcome, now: datetime) -> dict[str, Any]:
    if isinstance(outcome, Succeeded):
        return {"ended_at": now, "outcome": "succeeded"}
    if isinstance(outcome, Requeue):
        kind = "snoozed" if not outcome.consumes_attempt else "retry"
        return {
            "ended_at": now,
            "outcome": kind,
            "error": outcome.error,
            "wait_seconds": outcome.wait_seconds,
        }
    return {"ended_at": now, "outcome": "failed", "error": outcome.error}


def _event_data(task: ClaimedTask, outcome: Outcome, job_status: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "position": task.position,
        "sku": task.sku,
        "stem": task.stem,
        "attempt": task.attempts,
        "job_status": job_status,
    }
    if isinstance(outcome, Succeeded):
        return data | {"status": ImageStatus.SUCCEEDED.value, "result_url": outcome.result_url}
    if isinstance(outcome, Requeue):
        return data | {
            "status": QUEUED,
            "error": outcome.error,
            "retry_in": round(outcome.wait_seconds, 3),
        }
    return data | {"status": ImageStatus.FAILED.value, "error": outcome.error}
