"""The claim query: which queued image tasks may start now, in what order. SQL only, no I/O.

Admission (may it start?):
- the task is ``queued`` and due (``run_after <= now``), and its job is not being cancelled;
- the job's ``max_concurrency`` is not reached: running + rank within the job <= cap;
- for ``sku_serial`` jobs, no earlier image of the same SKU is still queued or running.

Order (fairness): a round robin across users, then across each user's jobs. Every candidate
gets a *turn*: for its user, ``running tasks of the user + its rank among the user's
candidates``; the user's candidates are ranked by their job's turn (``running tasks of the
job + rank within the job``). Lowest turn first. So a user with nothing running is served
before a user who holds every slot, and within a user, jobs take turns. This is deficit round
robin with a quantum of one task, computed in one query (window functions, SQLite >= 3.25 and
PostgreSQL alike).

The statement is built once per initial window and cached (``claim_candidates``); ``now`` and
the row limit are bound at execution (``claim_params``). Building it takes longer than running
it, so it must not be rebuilt for every claim.

Callers serialize claims (PostgreSQL: a transaction-level advisory lock; SQLite: ``BEGIN
IMMEDIATE``), so no other claim can raise the counts the query reads while it runs (a
concurrent finish or cancel can only lower them), and the limits are global across every
worker process and machine.

Known limits of this order (pinned by ``tests/integration/test_claim_order.py`` against the
pure reference ``policy.fairness``):
- a task held back by its key (full window, cooldown) still uses one of its user's turns, so a
  user with work waiting on a full key gets fewer starts on another key than round robin says;
- "served" looks at the user's unfinished jobs only: a user whose jobs all ended counts as
  never served and wins ties;
- the statement reads ``limit * 3 + 8`` rows before pacing: behind that many candidates of a
  paced key, a task of a free key waits for the next claim;
- two jobs created at the same instant have no tie-break, so their order may differ between
  SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, bindparam, case, exists, false, func, or_, select

from imagestudio.domain import ImageStatus, JobStatus
from imagestudio.store.tables import ai_job, ai_job_image, provider_governor

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value
CLAIM_LOCK_KEY = 7_320_114_901  # pg_advisory_xact_lock key for claims


def claim_params(now: datetime, limit: int) -> dict[str, Any]:
    """The values ``claim_candidates``' statement is executed with."""
    return {"now": now, "now_ts": now.timestamp(), "limit": limit}


@functools.cache
def claim_candidates(initial_window: float = 4.0) -> Any:
    """``SELECT id, provider_key ... ORDER BY turn LIMIT :limit``: the tasks to start at
    ``:now``, fairest first, within each provider key's window W and outside its cooldown."""
    img, job = ai_job_image, ai_job
    now = bindparam("now", type_=img.c.run_after.type)
    running = ai_job_image.alias("running")
    job_running = (
        select(running.c.job_pk, func.count().label("n"))
        .where(running.c.status == RUNNING)
        .group_by(running.c.job_pk)
        .subquery("job_running")
    )
    running_job = ai_job.alias("running_job")
    user_running = (
        select(running_job.c.user_id, func.count().label("n"))
        .select_from(running.join(running_job, running_job.c.id == running.c.job_pk))
        .where(running.c.status == RUNNING)
        .group_by(running_job.c.user_id)
        .subquery("user_running")
    )
    served_job = ai_job.alias("served_job")
    user_served = (  # when each user of an unfinished job last had a task started
        select(served_job.c.user_id, func.max(running.c.started_at).label("last"))
        .select_from(running.join(served_job, served_job.c.id == running.c.job_pk))
        .where(served_job.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
        .group_by(served_job.c.user_id)
        .subquery("user_served")
    )
    earlier = ai_job_image.alias("earlier")
    sku_blocked = exists().where(
        earlier.c.job_pk == img.c.job_pk,
        earlier.c.sku == img.c.sku,
        earlier.c.position < img.c.position,
        earlier.c.status.in_([QUEUED, RUNNING]),
    )
    jr = func.coalesce(job_running.c.n, 0)
    base = (
        select(
            img.c.id,
            img.c.position,
            job.c.user_id,
            job.c.created_at,
            job.c.max_concurrency,
            job.c.provider_key,
            jr.label("jr"),
            func.coalesce(user_running.c.n, 0).label("ur"),
            user_served.c.last.label("served"),
            (jr + func.row_number().over(partition_by=img.c.job_pk, order_by=img.c.position)).label(
                "job_turn"
            ),
        )
        .select_from(
            img.join(job, job.c.id == img.c.job_pk)
            .outerjoin(job_running, job_running.c.job_pk == img.c.job_pk)
            .outerjoin(user_running, user_running.c.user_id == job.c.user_id)
            .outerjoin(user_served, user_served.c.user_id == job.c.user_id)
        )
        .where(
            img.c.status == QUEUED,
            img.c.run_after <= now,
            job.c.cancel_requested == false(),
            or_(job.c.sku_serial == false(), ~sku_blocked),
        )
        .subquery("base")
    )
    user_turn = base.c.ur + func.row_number().over(
        partition_by=base.c.user_id,
        order_by=(base.c.job_turn, base.c.created_at, base.c.position),
    )
    ranked = (
        select(
            base.c.id,
            base.c.provider_key,
            user_turn.label("user_turn"),
            base.c.served,
            base.c.job_turn,
            base.c.created_at,
            base.c.position,
        )
        .where(or_(base.c.max_concurrency.is_(None), base.c.job_turn <= base.c.max_concurrency))
        .subquery("ranked")
    )
    return _within_windows(ranked, initial_window)


def fair_order(t: Any) -> tuple[Any, ...]:
    """Lowest turn first; among equal turns the user served longest ago (or never) first,
    so with more waiting users than free slots the slots rotate instead of going back to
    whoever was served first."""
    return (
        t.c.user_turn,
        t.c.served.asc().nulls_first(),
        t.c.job_turn,
        t.c.created_at,
        t.c.position,
    )


def _within_windows(ranked: Any, initial_window: float) -> Any:
    """Keep the candidates that fit their provider key's window and are out of cooldown."""
    running, running_job = ai_job_image.alias("k_running"), ai_job.alias("k_job")
    key_running = (  # a task holds its key's slot until its provider call ends
        select(running_job.c.provider_key, func.count().label("n"))
        .select_from(running.join(running_job, running_job.c.id == running.c.job_pk))
        .where(running.c.status == RUNNING, running.c.call_ended_at.is_(None))
        .group_by(running_job.c.provider_key)
        .subquery("key_running")
    )
    gov = provider_governor
    order = fair_order(ranked)
    key_turn = func.coalesce(key_running.c.n, 0) + func.row_number().over(
        partition_by=ranked.c.provider_key, order_by=order
    )
    # The learned window, never above an operator's pin (GovernorState.effective_window).
    pinned_lower = gov.c.pinned_window < gov.c.window
    window = func.coalesce(
        case((pinned_lower, gov.c.pinned_window), else_=gov.c.window), initial_window
    )
    keyed = (
        select(ranked, key_turn.label("key_turn"), window.label("key_window"))
        .select_from(
            ranked.outerjoin(
                key_running, key_running.c.provider_key == ranked.c.provider_key
            ).outerjoin(gov, gov.c.key == ranked.c.provider_key)
        )
        .where(func.coalesce(gov.c.cooldown_until, 0.0) <= bindparam("now_ts", type_=Float))
        .subquery("keyed")
    )
    return (
        select(keyed.c.id, keyed.c.provider_key)
        .where(keyed.c.key_turn <= keyed.c.key_window)
        .order_by(*fair_order(keyed))
        .limit(bindparam("limit", type_=Integer))
    )
