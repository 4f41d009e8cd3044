"""The claim's steps (``store.queue.claim_batch`` runs them in order, in one transaction).

1. ``read_view``: the bounded ``policy.fairness.View`` (active jobs, running tasks, each
   job's heads) and the governors of the active jobs' keys, read without locks;
2. ``policy.fairness.candidates``: the fair order within the windows, in Python;
3. ``admit``: lock the candidates' governor rows (key order; a key another claim holds is
   skipped unless every key is), count again under the locks, trim, pace, save the pace;
4. ``lease``: lock the chosen tasks' job rows (job order), lease the tasks still queued
   (skipping any row another transaction holds), move the jobs' counts and served time.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import ImageStatus, JobStatus
from imagestudio.policy import fairness
from imagestudio.policy.governor import GovernorParams, GovernorState
from imagestudio.policy.pace import apply_pace
from imagestudio.store import claim_sql, counts, governors
from imagestudio.store.tables import ai_job, ai_job_image

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    ids: list[int]  # fairest first
    wake_at: float | None  # the pace's next slot, if it held something back
    now: datetime  # read once the keys' locks were held: the tasks' start


async def read_view(
    conn: AsyncConnection, now: datetime, limit: int
) -> tuple[fairness.View, dict[str, GovernorState]]:
    """What the claim decides from, and the governors of the active jobs' keys (unlocked)."""
    rows = (await conn.execute(claim_sql.active_jobs())).all()
    served: dict[str, float] = {}
    jobs = []
    for r in rows:
        if r.last_started_at is not None:
            last = r.last_started_at.timestamp()
            served[r.user_id] = max(served.get(r.user_id, last), last)
        if not r.cancel_requested:
            jobs.append(_job(r))
    running = [
        fairness.Running(r.job_pk, r.user_id, r.provider_key, bool(r.in_call))
        for r in (await conn.execute(claim_sql.running_tasks())).all()
    ]
    limits = fairness.head_limits(jobs, running, limit)
    serial = {j.id for j in jobs if j.sku_serial}
    wants = [(pk, n, pk in serial) for pk, n in sorted(limits.items())]
    heads = await _heads(conn, now, wants)
    states = await governors.load(conn, {j.provider_key for j in jobs}, lock=False)
    return fairness.View(jobs, heads, running, served), states


def _job(r: Row[Any]) -> fairness.Job:
    return fairness.Job(
        r.id,
        r.user_id,
        r.created_at.timestamp(),
        r.provider_key,
        r.max_concurrency,
        bool(r.sku_serial),
        bool(r.cancel_requested),
    )


async def _heads(
    conn: AsyncConnection, now: datetime, wants: list[tuple[str, int, bool]]
) -> dict[str, list[fairness.Head]]:
    """Each asked-for job's first ``n`` heads, by position."""
    heads: dict[str, list[fairness.Head]] = defaultdict(list)
    if not wants:
        return heads
    for row in await _head_rows(conn, now, wants):
        heads[str(row[0])].append(fairness.Head(int(row[1]), int(row[2])))
    for found in heads.values():
        found.sort(key=lambda h: h.position)
    return heads


async def _head_rows(
    conn: AsyncConnection, now: datetime, wants: list[tuple[str, int, bool]]
) -> list[tuple[Any, ...]]:
    if conn.dialect.name == "postgresql":
        params = {
            "now": now,
            "job_pks": [w[0] for w in wants],
            "ns": [w[1] for w in wants],
            "serials": [w[2] for w in wants],
        }
        return [tuple(r) for r in await conn.execute(claim_sql.heads_lateral(), params)]
    rows: list[tuple[Any, ...]] = []
    most = claim_sql.UNION_ARMS[-1]
    for start in range(0, len(wants), most):
        chunk = wants[start : start + most]
        arms = next(a for a in claim_sql.UNION_ARMS if a >= len(chunk))
        params = {"now": now} | claim_sql.union_params(chunk, arms)
        rows.extend(tuple(r) for r in await conn.execute(claim_sql.heads_union(arms), params))
    return rows


async def admit(
    conn: AsyncConnection,
    params: GovernorParams,
    view: fairness.View,
    found: Sequence[tuple[int, str]],
    clock: Callable[[], datetime],
    limit: int,
) -> Admission:
    """Lock the candidates' keys, trim what no longer fits under the lock, pace the rest.

    Under a key's governor lock no other claim can start a task of that key, and a job has
    one key, so the key's in-call count and its jobs' running counts read here can only fall
    until commit: the window and the caps hold whatever other claimers do. If another claim
    started tasks of these keys since ``view`` was read (their counts moved), the view is
    read again under the locks, so a claim that waited for a key does not come back empty.
    """
    states, keys = await _lock_keys(conn, sorted({key for _, key in found}))
    now = clock()  # after the locks (waiting takes time) and after every read it decides on
    counted = await _key_counts(conn, sorted(keys))
    if counted != _counts_in(view, keys):
        view, _ = await read_view(conn, now, limit)
        found = fairness.candidates(
            view, states, now=now.timestamp(), limit=limit, initial_window=params.initial_window
        )
    found = [c for c in found if c[1] in keys]
    job_of = {h.id: pk for pk, heads in view.heads.items() for h in heads}
    pks = sorted({job_of[i] for i, _ in found})
    running = Counter(
        dict((await conn.execute(claim_sql.running_of_jobs(), {"job_pks": pks})).all())
    )
    caps = {j.id: j.max_concurrency for j in view.jobs}
    in_call = Counter({key: n for key, (_, n) in counted.items()})
    fits = []
    for image_id, key in found:
        window = params.initial_window if key not in states else states[key].effective_window
        job_pk, cap = job_of[image_id], caps.get(job_of[image_id])
        if in_call[key] + 1 <= window and (cap is None or running[job_pk] + 1 <= cap):
            in_call[key] += 1
            running[job_pk] += 1
            fits.append((image_id, key))
    paced = apply_pace(fits, states, now.timestamp(), limit)
    for key, tat in paced.tats.items():
        await governors.save(conn, key, dataclasses.replace(states[key], tat=tat), now)
    return Admission(paced.ids, paced.wake_at, now)


async def _key_counts(conn: AsyncConnection, keys: list[str]) -> dict[str, tuple[int, int]]:
    """Per key: its running tasks, and those of them in a provider call."""
    found = await conn.execute(claim_sql.key_counts(), {"keys": keys})
    return {str(key): (int(n), int(calls)) for key, n, calls in found.all() if n}


def _counts_in(view: fairness.View, keys: set[str]) -> dict[str, tuple[int, int]]:
    counted: dict[str, tuple[int, int]] = {}
    for r in view.running:
        if r.key in keys:
            n, calls = counted.get(r.key, (0, 0))
            counted[r.key] = (n + 1, calls + int(r.in_call))
    return counted


async def _lock_keys(
    conn: AsyncConnection, wanted: list[str]
) -> tuple[dict[str, GovernorState], set[str]]:
    """Lock the governor rows of ``wanted`` (``FOR UPDATE``, key order); the states and the
    keys this claim may start tasks on.

    A key another claim holds is skipped (``SKIP LOCKED``): that claim is serving it, and this
    one takes its other candidates instead of waiting. Only when every key is held does it
    wait for them (it has nothing else to do). A key without a governor row (none is left
    without one at submit) has nothing to lock and keeps the initial window.
    """
    states = await governors.load(conn, wanted, lock=True, skip_locked=True)
    missing = set(wanted) - set(states)
    if missing:
        held = await governors.existing(conn, missing)
        if len(held) == len(wanted):
            states = await governors.load(conn, wanted, lock=True)
            held = set()
        missing -= held
    return states, set(states) | missing


async def lease(
    conn: AsyncConnection, ids: list[int], worker: str, now: datetime, lease_seconds: float
) -> list[Row[Any]]:
    """Lease the tasks of ``ids`` still queued; move their jobs' counts and served time."""
    img = ai_job_image
    job_pks = await conn.execute(select(img.c.job_pk).where(img.c.id.in_(ids)).distinct())
    await lock_jobs(conn, [str(pk) for (pk,) in job_pks.all()])
    still = select(img.c.id).where(img.c.id.in_(ids), img.c.status == QUEUED)
    if conn.dialect.name == "postgresql":  # a row someone holds is being cancelled: skip it
        still = still.with_for_update(skip_locked=True)
    stmt = (
        update(img)
        .where(img.c.id.in_(still.scalar_subquery()))
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
    )
    rows = list((await conn.execute(stmt.returning(img))).all())
    await _started(conn, Counter(str(r.job_pk) for r in rows), now)
    return rows


async def lock_jobs(conn: AsyncConnection, job_pks: Iterable[str]) -> None:
    """Hold the job rows (FOR NO KEY UPDATE, in job order) before touching their images, as
    finish and cancel do: no two of them wait on each other in opposite orders."""
    pks = sorted(set(job_pks))
    if pks and conn.dialect.name == "postgresql":
        query = select(ai_job.c.id).where(ai_job.c.id.in_(pks)).order_by(ai_job.c.id)
        await conn.execute(query.with_for_update(key_share=True))


async def _started(conn: AsyncConnection, leased: Counter[str], now: datetime) -> None:
    """One UPDATE per job (SQLite rewrites the whole row, config and all, on each): its
    counts (queued -> running), its last start, ``running`` if it was ``queued``."""
    job = ai_job
    later = case(
        (job.c.last_started_at.is_(None) | (job.c.last_started_at < now), now),
        else_=job.c.last_started_at,
    )
    queued = job.c.status == JobStatus.QUEUED.value
    n_queued, n_running = counts.COLUMNS[QUEUED], counts.COLUMNS[RUNNING]
    for job_pk in sorted(leased):
        await conn.execute(
            update(job)
            .where(job.c.id == job_pk)
            .values(
                {
                    n_queued: job.c[n_queued] - leased[job_pk],
                    n_running: job.c[n_running] + leased[job_pk],
                    "status": case((queued, JobStatus.RUNNING.value), else_=job.c.status),
                    "last_started_at": later,
                    "updated_at": case((queued, now), else_=job.c.updated_at),
                }
            )
        )
