"""The store: every read and write of jobs and image tasks, SQL kept in this one place.

The same code runs on SQLite (embedded default; every transaction ``BEGIN IMMEDIATE``) and on
PostgreSQL (claims with ``FOR UPDATE SKIP LOCKED``; completions lock the job row so the
roll-up never loses an update).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagestudio.domain import (
    TERMINAL_JOB_STATUSES,
    ImageStatus,
    JobSpec,
    JobStatus,
    OutputSpec,
)
from imagestudio.errors import ApiKeyRequired, JobConflict, JobNotFound, LeaseLost
from imagestudio.policy.governor import GovernorParams, GovernorState, Observation, observe
from imagestudio.policy.pace import apply_pace
from imagestudio.policy.rollup import rollup_status
from imagestudio.store import governors
from imagestudio.store.claim_sql import CLAIM_LOCK_KEY, claim_candidates, claim_params
from imagestudio.store.records import (
    AttemptRecord,
    Claim,
    ClaimedTask,
    EventRecord,
    Failed,
    GovernorView,
    ImageRecord,
    JobProgress,
    JobRecord,
    Outcome,
    Requeue,
    SubmitResult,
    Succeeded,
)
from imagestudio.store.tables import (
    ai_job,
    ai_job_attempt,
    ai_job_event,
    ai_job_image,
    ai_job_secret,
    provider_governor,
)

Clock = Callable[[], datetime]
Pin = tuple[float | None, float | None]  # (window, starts per second) an operator fixed
QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value


def utcnow() -> datetime:
    return datetime.now(UTC)


def provider_key(api_base: str, api_key: str, model: str) -> str:
    """Identifies one provider account and model without revealing the key."""
    digest = hashlib.sha256(f"{api_base}\n{api_key}\n{model}".encode()).hexdigest()
    return digest[:32]


class Store:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utcnow,
        governor: GovernorParams | None = None,
        pins: Mapping[str, Pin] | None = None,
        reader: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        # SQLite: reads on their own engine, so they never queue behind a writer (WAL).
        self.reader = reader or engine
        self.clock = clock
        self.governor = governor or GovernorParams()
        self.pins: Mapping[str, Pin] = pins or {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def close(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()

    # -- intake -------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, sealed_key: bytes) -> SubmitResult:
        """Insert the job and all its images in one transaction, or return the existing job.

        The unique ``(user_id, job_id)`` constraint with ``ON CONFLICT DO NOTHING`` makes
        concurrent identical submissions race-free: exactly one inserts.
        """
        now = self.clock()
        pk = uuid.uuid4().hex
        job_id = spec.job_id or pk
        async with self.engine.begin() as conn:
            inserted = await conn.scalar(self._insert_job(spec, pk, job_id, now))
            if inserted is not None:
                await conn.execute(ai_job_image.insert(), _image_rows(spec, pk, now))
                await conn.execute(ai_job_secret.insert().values(job_pk=pk, api_key_enc=sealed_key))
                await self._ensure_governor(
                    conn,
                    provider_key(spec.provider.api_base, spec.api_key, spec.provider.model),
                    spec.provider.api_base,
                    spec.provider.model,
                )
        job = await self._job_by_key(spec.user_id, job_id)
        if inserted is None and job.payload_hash != spec.payload_hash:
            raise JobConflict(
                f"job_id {job_id!r} was already used for a different payload; "
                "use a new job_id for a new job"
            )
        return SubmitResult(job=job, created=inserted is not None)

    def _insert_job(self, spec: JobSpec, pk: str, job_id: str, now: datetime) -> Any:
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        values = {
            "id": pk,
            "type": "image_studio",
            "user_id": spec.user_id,
            "job_id": job_id,
            "mode": spec.mode,
            "status": JobStatus.QUEUED.value,
            "config": spec.config,
            "payload_hash": spec.payload_hash,
            "result_image_urls": [],
            "total": len(spec.images),
            "api_base": spec.provider.api_base,
            "model": spec.provider.model,
            "api_style": spec.provider.api_style,
            "provider_key": provider_key(spec.provider.api_base, spec.api_key, spec.provider.model),
            "out_width": spec.output.width,
            "out_height": spec.output.height,
            "out_format": spec.output.format,
            "out_quality": spec.output.quality,
            "max_concurrency": spec.max_concurrency,
            "sku_serial": spec.sku_serial,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
        }
        stmt = dialect_insert(ai_job).values(**values)
        return stmt.on_conflict_do_nothing(index_elements=["user_id", "job_id"]).returning(
            ai_job.c.id
        )

    # -- reads --------------------------------------------------------------------------

    async def _job_by_key(self, user_id: str | None, job_id: str) -> JobRecord:
        """The job ``job_id`` of ``user_id``; ``None`` (local mode) means any user, newest."""
        query = select(ai_job).where(ai_job.c.job_id == job_id)
        if user_id is not None:
            query = query.where(ai_job.c.user_id == user_id)
        query = query.order_by(ai_job.c.created_at.desc()).limit(1)
        async with self.reader.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return _job_record(row)

    async def get_job(self, user_id: str | None, job_id: str) -> JobRecord:
        return await self._job_by_key(user_id, job_id)

    async def progress(self, user_id: str | None, job_id: str) -> JobProgress:
        job = await self._job_by_key(user_id, job_id)
        query = (
            select(ai_job_image.c.sku, ai_job_image.c.status, func.count())
            .where(ai_job_image.c.job_pk == job.id)
            .group_by(ai_job_image.c.sku, ai_job_image.c.status)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        counts = {s.value: 0 for s in ImageStatus}
        per_sku: dict[str, dict[str, int]] = {}
        for sku, status, n in rows:
            counts[status] += n
            per_sku.setdefault(sku, {s.value: 0 for s in ImageStatus})[status] += n
        ordered = {sku: per_sku[sku] for sku in _sku_order(job) if sku in per_sku}
        return JobProgress(job=job, counts=counts, per_sku=ordered)

    async def list_jobs(
        self, user_id: str | None, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        query = select(ai_job).order_by(ai_job.c.created_at.desc(), ai_job.c.id)
        if user_id is not None:
            query = query.where(ai_job.c.user_id == user_id)
        query = query.limit(limit).offset(offset)
        async with self.reader.connect() as conn:
            return [_job_record(r) for r in (await conn.execute(query)).all()]

    async def images(self, job_pk: str) -> list[ImageRecord]:
        query = (
            select(ai_job_image)
            .where(ai_job_image.c.job_pk == job_pk)
            .order_by(ai_job_image.c.position)
        )
        async with self.reader.connect() as conn:
            return [_image_record(r) for r in (await conn.execute(query)).all()]

    async def result_keys(self, job_pk: str) -> set[str]:
        """The storage keys of the job's recorded results."""
        img = ai_job_image
        query = select(img.c.result_key).where(
            img.c.job_pk == job_pk, img.c.result_key.is_not(None)
        )
        async with self.reader.connect() as conn:
            return {str(key) for key in (await conn.scalars(query)).all()}

    async def attempts(self, job_pk: str) -> list[AttemptRecord]:
        a, i = ai_job_attempt, ai_job_image
        query = (
            select(a, i.c.position, i.c.sku, i.c.stem)
            .join(i, i.c.id == a.c.image_id)
            .where(a.c.job_pk == job_pk)
            .order_by(a.c.started_at, a.c.id)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AttemptRecord(
                image_id=r.image_id,
                position=r.position,
                sku=r.sku,
                stem=r.stem,
                fence=r.fence,
                worker=r.worker,
                started_at=r.started_at,
                ended_at=r.ended_at,
                call_started_at=r.call_started_at,
                call_ended_at=r.call_ended_at,
                outcome=r.outcome,
                error=r.error,
                wait_seconds=r.wait_seconds,
            )
            for r in rows
        ]

    async def sealed_key(self, job_pk: str) -> bytes | None:
        async with self.reader.connect() as conn:
            value = await conn.scalar(
                select(ai_job_secret.c.api_key_enc).where(ai_job_secret.c.job_pk == job_pk)
            )
        return bytes(value) if value is not None else None

    async def queue_depth(self) -> int:
        async with self.reader.connect() as conn:
            value = await conn.scalar(select(func.count()).where(ai_job_image.c.status == QUEUED))
        return int(value or 0)

    # -- the worker's side --------------------------------------------------------------

    async def claim(self, worker: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        return (await self.claim_batch(worker, limit, lease_seconds)).tasks

    async def claim_batch(self, worker: str, limit: int, lease_seconds: float) -> Claim:
        """Lease up to ``limit`` tasks that may start now, fairest first (``claim_sql``),
        within each provider key's window, pace and cooldown (``scheduler.governor``).

        This is the one place that decides "may this task start now?". Expired leases are
        rescued first, in the same transaction, so nothing stays ``running`` after a crash.
        ``wake_at`` says when something held back may start (a pace slot, a cooldown's end,
        a retry coming due), so an idle worker can sleep exactly that long.
        """
        if limit <= 0:
            return Claim([], None)
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
            now = self.clock()  # read once the lock is held: waiting for it takes time
            await _rescue_expired(conn, now)
            ids, wake_at = await self._admit(conn, now, limit)
            if not ids:
                return Claim([], wake_at)
            rows = list((await conn.execute(_lease(ids, worker, now, lease_seconds))).all())
            job_pks = sorted({r.job_pk for r in rows})
            await conn.execute(
                update(ai_job)
                .where(ai_job.c.id.in_(job_pks), ai_job.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, updated_at=now)
            )
            await conn.execute(
                ai_job_attempt.insert(), [_attempt_row(r, worker, now) for r in rows]
            )
            await _events(
                conn,
                now,
                [
                    (
                        r.job_pk,
                        "image",
                        {
                            "position": r.position,
                            "sku": r.sku,
                            "stem": r.stem,
                            "status": RUNNING,
                            "attempt": r.attempts,
                        },
                    )
                    for r in rows
                ],
            )
            jobs = await _jobs_by_pk(conn, job_pks)
        order = {image_id: i for i, image_id in enumerate(ids)}
        rows.sort(key=lambda r: order[r.id])
        return Claim([_claimed(r, jobs[r.job_pk]) for r in rows], wake_at)

    async def _admit(
        self, conn: AsyncConnection, now: datetime, limit: int
    ) -> tuple[list[int], float | None]:
        query = claim_candidates(self.governor.initial_window)
        found = await conn.execute(query, claim_params(now, limit * 3 + 8))
        candidates = [(int(r[0]), str(r[1])) for r in found.all()]
        states = await governors.load(conn, {key for _, key in candidates}, lock=True)
        paced = apply_pace(candidates, states, now.timestamp(), limit)
        for key, tat in paced.tats.items():
            await governors.save(conn, key, dataclasses.replace(states[key], tat=tat), now)
        wake = [t for t in (paced.wake_at, await _next_due(conn, now)) if t is not None]
        return paced.ids, min(wake) if wake else None

    async def still_held(self, task: ClaimedTask) -> bool:
        """Whether this attempt still owns its task (checked right before a provider call)."""
        img = ai_job_image
        async with self.reader.connect() as conn:
            found = await conn.scalar(
                select(img.c.id).where(
                    img.c.id == task.image_id, img.c.fence == task.fence, img.c.status == RUNNING
                )
            )
        return found is not None

    async def heartbeat(
        self, worker: str, image_ids: Sequence[int], lease_seconds: float
    ) -> set[tuple[int, int]]:
        """Extend this worker's leases; returns the ``(image id, fence)`` attempts it holds.

        An attempt missing from the answer was cancelled, taken over, or superseded by a newer
        attempt of the same image: the worker stops it.
        """
        if not image_ids:
            return set()
        until = self.clock() + timedelta(seconds=lease_seconds)
        img = ai_job_image
        stmt = (
            update(img)
            .where(
                img.c.id.in_(list(image_ids)), img.c.lease_owner == worker, img.c.status == RUNNING
            )
            .values(lease_expires_at=until)
            .returning(img.c.id, img.c.fence)
        )
        async with self.engine.begin() as conn:
            return {(int(r[0]), int(r[1])) for r in (await conn.execute(stmt)).all()}

    async def release(self, task: ClaimedTask) -> None:
        """Give a task back unfinished (worker draining): queued again, attempt not counted."""
        now = self.clock()
        img = ai_job_image
        async with self.engine.begin() as conn:
            await conn.execute(
                update(img)
                .where(
                    img.c.id == task.image_id, img.c.fence == task.fence, img.c.status == RUNNING
                )
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
                .where(
                    ai_job_attempt.c.image_id == task.image_id, ai_job_attempt.c.fence == task.fence
                )
                .values(ended_at=now, outcome="released")
            )

    async def has_pending(self) -> bool:
        """Whether any image is queued or running (due now or later)."""
        async with self.reader.connect() as conn:
            found = await conn.scalar(
                select(ai_job_image.c.id)
                .where(ai_job_image.c.status.in_([QUEUED, RUNNING]))
                .limit(1)
            )
        return found is not None

    async def finish(self, task: ClaimedTask, outcome: Outcome) -> str:
        """Record the attempt's outcome if this attempt still holds the task (fencing).

        Raises ``LeaseLost`` when a newer attempt took the task over; nothing is written then.
        Returns the job's status after the roll-up.
        """
        async with self.engine.begin() as conn:
            await self._lock_job(conn, task.job_pk)
            now = self.clock()
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
            await conn.execute(
                update(ai_job_attempt)
                .where(
                    ai_job_attempt.c.image_id == task.image_id,
                    ai_job_attempt.c.fence == task.fence,
                )
                .values(**_attempt_values(outcome, now))
            )
            if isinstance(outcome, Failed) and outcome.fail_job:
                await self._fail_queued(conn, task.job_pk, outcome, now)
            status = await self._rollup(conn, task.job_pk, now)
            await _events(conn, now, [(task.job_pk, "image", _event_data(task, outcome, status))])
            return status

    # -- user actions -------------------------------------------------------------------

    async def cancel(self, job_pk: str) -> str:
        """Cancel a job: queued and running images end ``cancelled`` now (a running attempt's
        worker sees its lease gone at its next heartbeat and aborts the call); images already
        done are kept. Idempotent; a job that already ended is left as it is."""
        now = self.clock()
        img, att = ai_job_image, ai_job_attempt
        async with self.engine.begin() as conn:
            await self._lock_job(conn, job_pk)
            status = await conn.scalar(select(ai_job.c.status).where(ai_job.c.id == job_pk))
            if status in TERMINAL_JOB_STATUSES:
                return str(status)
            await conn.execute(
                update(ai_job).where(ai_job.c.id == job_pk).values(cancel_requested=True)
            )
            await conn.execute(
                update(img)
                .where(img.c.job_pk == job_pk, img.c.status.in_([QUEUED, RUNNING]))
                .values(
                    status=ImageStatus.CANCELLED.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                    error="cancelled",
                    error_kind="Cancelled",
                )
            )
            await conn.execute(
                update(att)
                .where(att.c.job_pk == job_pk, att.c.ended_at.is_(None))
                .values(ended_at=now, outcome="cancelled")
            )
            status = await self._rollup(conn, job_pk, now)
            await _events(conn, now, [(job_pk, "job", {"status": status, "action": "cancel"})])
            return status

    async def retry_failed(self, job_pk: str, sealed_key: bytes | None, new_key: str | None) -> int:
        """Queue the job's failed images again with a fresh attempt budget; returns how many.

        The key was erased when the job ended, so a retry brings it again (``sealed_key``,
        ``new_key`` for the provider key); without one it raises ``ApiKeyRequired``.
        """
        now = self.clock()
        img = ai_job_image
        async with self.engine.begin() as conn:
            await self._lock_job(conn, job_pk)
            failed = await conn.scalar(
                select(func.count()).where(
                    img.c.job_pk == job_pk, img.c.status == ImageStatus.FAILED.value
                )
            )
            if not failed:
                return 0
            await self._rekey(conn, job_pk, sealed_key, new_key)
            await conn.execute(
                update(img)
                .where(img.c.job_pk == job_pk, img.c.status == ImageStatus.FAILED.value)
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
            await conn.execute(
                update(ai_job)
                .where(ai_job.c.id == job_pk)
                .values(cancel_requested=False, error=None)
            )
            status = await self._rollup(conn, job_pk, now)
            await _events(
                conn,
                now,
                [(job_pk, "job", {"status": status, "action": "retry", "requeued": int(failed)})],
            )
            return int(failed)

    async def _rekey(
        self, conn: AsyncConnection, job_pk: str, sealed_key: bytes | None, new_key: str | None
    ) -> None:
        has_key = await conn.scalar(
            select(ai_job_secret.c.job_pk).where(ai_job_secret.c.job_pk == job_pk)
        )
        if sealed_key is None or new_key is None:
            if has_key is None:
                raise ApiKeyRequired(
                    "the job's API key was erased when it ended; send it again as api_key"
                )
            return
        job = (await conn.execute(select(ai_job).where(ai_job.c.id == job_pk))).one()
        await conn.execute(ai_job_secret.delete().where(ai_job_secret.c.job_pk == job_pk))
        await conn.execute(ai_job_secret.insert().values(job_pk=job_pk, api_key_enc=sealed_key))
        await conn.execute(
            update(ai_job)
            .where(ai_job.c.id == job_pk)
            .values(provider_key=provider_key(job.api_base, new_key, job.model))
        )
        await self._ensure_governor(
            conn, provider_key(job.api_base, new_key, job.model), job.api_base, job.model
        )

    async def _ensure_governor(
        self, conn: AsyncConnection, key: str, api_base: str, model: str
    ) -> None:
        pin = self.pins.get(api_base.rstrip("/"), (None, None))
        await governors.ensure(
            conn,
            key=key,
            api_base=api_base,
            model=model,
            params=self.governor,
            pins=pin,
            now=self.clock(),
        )

    async def end_call(
        self, task: ClaimedTask, sent_at: float, observation: Observation | None
    ) -> GovernorState | None:
        """The task's provider call is over: its slot in the key's window frees (the rest of
        the task, post-processing and storing, no longer counts), the attempt records the
        call's start and end, and the key's governor learns from what the call said."""
        now = self.clock()
        key = task.job.provider_key
        async with self.engine.begin() as conn:
            states = await governors.load(conn, [key], lock=True)
            in_flight = await conn.scalar(_calls_in_flight(key))
            await conn.execute(
                update(ai_job_image)
                .where(ai_job_image.c.id == task.image_id, ai_job_image.c.fence == task.fence)
                .values(call_ended_at=now)
            )
            await conn.execute(
                update(ai_job_attempt)
                .where(
                    ai_job_attempt.c.image_id == task.image_id, ai_job_attempt.c.fence == task.fence
                )
                .values(call_started_at=datetime.fromtimestamp(sent_at, UTC), call_ended_at=now)
            )
            if observation is None or key not in states:
                return None
            observed = dataclasses.replace(observation, in_flight=int(in_flight or 0))
            state = observe(states[key], observed, self.governor)
            await governors.save(conn, key, state, now)
            return state

    async def governor_states(self, keys: Sequence[str] | None = None) -> list[GovernorView]:
        """The governors (all, or those of ``keys``) with their running tasks, for display."""
        gov, running, job = provider_governor, ai_job_image, ai_job
        in_flight = (
            select(job.c.provider_key, func.count().label("n"))
            .select_from(running.join(job, job.c.id == running.c.job_pk))
            .where(running.c.status == RUNNING, running.c.call_ended_at.is_(None))
            .group_by(job.c.provider_key)
            .subquery()
        )
        query = select(gov, func.coalesce(in_flight.c.n, 0).label("in_flight")).outerjoin(
            in_flight, in_flight.c.provider_key == gov.c.key
        )
        if keys is not None:
            query = query.where(gov.c.key.in_(list(keys)))
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query.order_by(gov.c.key))).all()
        return [
            GovernorView(
                key=r.key,
                api_base=r.api_base,
                model=r.model,
                state=governors.to_state(r),
                in_flight=int(r.in_flight),
            )
            for r in rows
        ]

    async def events_after(self, job_pk: str, after: int, limit: int = 500) -> list[EventRecord]:
        ev = ai_job_event
        query = (
            select(ev.c.id, ev.c.type, ev.c.data, ev.c.created_at)
            .where(ev.c.job_pk == job_pk, ev.c.id > after)
            .order_by(ev.c.id)
            .limit(limit)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            EventRecord(id=r.id, type=r.type, data=r.data, created_at=r.created_at) for r in rows
        ]

    async def _lock_job(self, conn: AsyncConnection, job_pk: str) -> None:
        if self.dialect == "postgresql":
            # FOR NO KEY UPDATE: serializes the job's roll-ups without blocking the foreign-key
            # checks of a claim inserting attempt and event rows (which would deadlock).
            await conn.execute(
                select(ai_job.c.id).where(ai_job.c.id == job_pk).with_for_update(key_share=True)
            )

    async def _fail_queued(
        self, conn: AsyncConnection, job_pk: str, outcome: Failed, now: datetime
    ) -> None:
        await conn.execute(
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
        await conn.execute(update(ai_job).where(ai_job.c.id == job_pk).values(error=outcome.error))

    async def _rollup(self, conn: AsyncConnection, job_pk: str, now: datetime) -> str:
        """Recompute the job's status, ordered result URLs and ``updated_at`` from its images."""
        img = ai_job_image
        by_status = select(img.c.status, func.count()).where(img.c.job_pk == job_pk)
        rows = (await conn.execute(by_status.group_by(img.c.status))).all()
        counts: dict[str, int] = {str(r[0]): int(r[1]) for r in rows}
        urls = (
            await conn.scalars(
                select(img.c.result_url)
                .where(img.c.job_pk == job_pk, img.c.status == ImageStatus.SUCCEEDED.value)
                .order_by(img.c.position)
            )
        ).all()
        job = (
            await conn.execute(
                select(ai_job.c.cancel_requested, ai_job.c.status).where(ai_job.c.id == job_pk)
            )
        ).one()
        status = rollup_status(
            counts,
            cancel_requested=bool(job.cancel_requested),
            started=job.status != JobStatus.QUEUED.value,
        )
        values: dict[str, Any] = {
            "status": status.value,
            "result_image_urls": list(urls),
            "updated_at": now,
            "finished_at": now if status in TERMINAL_JOB_STATUSES else None,
        }
        await conn.execute(update(ai_job).where(ai_job.c.id == job_pk).values(**values))
        if status in TERMINAL_JOB_STATUSES:  # the key is erased when the job ends
            await conn.execute(ai_job_secret.delete().where(ai_job_secret.c.job_pk == job_pk))
        return status.value


def _calls_in_flight(key: str) -> Any:
    """Tasks of the key that are in or before their provider call (this one included)."""
    img, job = ai_job_image, ai_job
    return (
        select(func.count())
        .select_from(img.join(job, job.c.id == img.c.job_pk))
        .where(job.c.provider_key == key, img.c.status == RUNNING, img.c.call_ended_at.is_(None))
    )


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


def _attempt_row(row: Row[Any], worker: str, now: datetime) -> dict[str, Any]:
    return {
        "job_pk": row.job_pk,
        "image_id": row.id,
        "fence": row.fence,
        "worker": worker,
        "started_at": now,
    }


async def _events(
    conn: AsyncConnection, now: datetime, events: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """Append progress events (the SSE stream reads them back by id)."""
    if events:
        await conn.execute(
            ai_job_event.insert(),
            [
                {"job_pk": pk, "type": kind, "data": data, "created_at": now}
                for pk, kind, data in events
            ],
        )


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


def _image_rows(spec: JobSpec, pk: str, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "job_pk": pk,
            "position": image.position,
            "sku": image.sku,
            "sku_index": image.sku_index,
            "stem": image.stem,
            "name": image.name,
            "source_url": image.source_url,
            "prompt": image.prompt,
            "status": QUEUED,
            "run_after": now,
            "updated_at": now,
        }
        for image in spec.images
    ]


async def _jobs_by_pk(conn: AsyncConnection, job_pks: Sequence[str]) -> dict[str, JobRecord]:
    rows = (await conn.execute(select(ai_job).where(ai_job.c.id.in_(list(job_pks))))).all()
    return {r.id: _job_record(r) for r in rows}


def _sku_order(job: JobRecord) -> list[str]:
    options = job.config.get("options") or {}
    return [str(s) for s in options.get("skus") or []] or [str(job.config.get("sku"))]


def _job_record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        user_id=row.user_id,
        job_id=row.job_id,
        mode=row.mode,
        status=row.status,
        total=row.total,
        config=row.config,
        payload_hash=row.payload_hash,
        result_image_urls=list(row.result_image_urls or []),
        error=row.error,
        api_base=row.api_base,
        model=row.model,
        api_style=row.api_style,
        provider_key=row.provider_key,
        output=OutputSpec(
            width=row.out_width,
            height=row.out_height,
            format=row.out_format,
            quality=row.out_quality,
        ),
        max_concurrency=row.max_concurrency,
        sku_serial=bool(row.sku_serial),
        cancel_requested=bool(row.cancel_requested),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _image_record(row: Row[Any]) -> ImageRecord:
    return ImageRecord(
        id=row.id,
        position=row.position,
        sku=row.sku,
        sku_index=row.sku_index,
        stem=row.stem,
        name=row.name,
        source_url=row.source_url,
        prompt=row.prompt,
        status=row.status,
        attempts=row.attempts,
        calls=row.calls,
        snoozes=row.snoozes,
        result_url=row.result_url,
        result_key=row.result_key,
        error=row.error,
        error_kind=row.error_kind,
        run_after=row.run_after,
        first_started_at=row.first_started_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _claimed(row: Row[Any], job: JobRecord) -> ClaimedTask:
    return ClaimedTask(
        image_id=row.id,
        job_pk=row.job_pk,
        fence=row.fence,
        attempts=row.attempts,
        snoozes=row.snoozes,
        billed_timeouts=row.billed_timeouts,
        position=row.position,
        sku=row.sku,
        stem=row.stem,
        source_url=row.source_url,
        prompt=row.prompt,
        first_started_at=row.first_started_at,
        job=job,
    )
