"""The store: one facade over every read and write of jobs, tasks, governors and events.

Each method picks the engine and the transaction; the SQL lives in the modules by concern:

- ``jobs``: intake, the reads behind the API, the job's roll-up;
- ``queue``: the claim (admission, lease, rescue of lost leases) and the lease's upkeep;
  ``claim`` holds the claim's steps, ``claim_sql`` its bounded reads;
- ``outcomes``: an attempt's provider call ending and its outcome, fenced;
- ``actions``: cancel and retry;
- ``governors``: provider governor rows;
- ``outbox``: the event log and its consumers (``Store.outbox``).

The same code runs on SQLite (embedded default; every writing transaction is ``BEGIN
IMMEDIATE``, so writers are serialized; reads go to their own engine and never wait for a
writer) and on PostgreSQL (a claim locks the governor rows of the keys it starts tasks on,
so claims for one key are serialized and claims for different keys are not;
completions, cancels and retries lock their job row so the roll-up never loses an update).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from imagestudio.domain import JobSpec
from imagestudio.policy.governor import GovernorParams, GovernorState, Observation
from imagestudio.policy.quota import InFlight
from imagestudio.store import actions, governors, jobs, outcomes, ownership, queue, quota
from imagestudio.store.governors import Pin, provider_key
from imagestudio.store.outbox import EventOutbox
from imagestudio.store.records import (
    AttemptRecord,
    Claim,
    ClaimedTask,
    EventRecord,
    GovernorView,
    ImageRecord,
    JobProgress,
    JobRecord,
    Outcome,
    Page,
    SubmitResult,
)

__all__ = ["Clock", "Pin", "Store", "provider_key", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


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

    @property
    def outbox(self) -> EventOutbox:
        """The event log's consumers: cursor reads and acks, and the per-job read of SSE."""
        return EventOutbox(self.engine, reader=self.reader, clock=self.clock)

    @property
    def _defaults(self) -> governors.Defaults:
        return governors.Defaults(self.governor, self.pins)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()

    # -- intake and reads (store.jobs) ------------------------------------------------------

    async def submit(self, spec: JobSpec, sealed_key: bytes) -> SubmitResult:
        """Insert the job and all its images in one transaction, or return the existing job
        (``JobConflict`` if its ``job_id`` was used for another payload)."""
        async with self.engine.begin() as conn:
            job_id, created = await jobs.insert(
                conn, spec, sealed_key, defaults=self._defaults, now=self.clock()
            )
        job = await self.get_job(spec.user_id, job_id, urls=False)
        return jobs.submitted(job, spec, created=created)

    async def get_job(self, user_id: str | None, job_id: str, *, urls: bool = True) -> JobRecord:
        """The job ``job_id`` of ``user_id``; ``None`` (local mode) means any user, newest.
        ``urls=False``: without ``result_image_urls`` (megabytes for a big job)."""
        async with self.reader.connect() as conn:
            return await jobs.job_by_key(conn, user_id, job_id, urls=urls)

    async def progress(self, user_id: str | None, job_id: str) -> JobProgress:
        async with self.reader.connect() as conn:
            return await jobs.progress(conn, user_id, job_id)

    async def list_jobs(
        self, user_id: str | None, *, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        async with self.reader.connect() as conn:
            return await jobs.list_jobs(conn, user_id, limit=limit, offset=offset)

    async def images(self, job_pk: str) -> list[ImageRecord]:
        async with self.reader.connect() as conn:
            return await jobs.images(conn, job_pk)

    async def image_page(self, job: JobRecord, *, offset: int, limit: int) -> Page[ImageRecord]:
        """Images by position from ``offset``, at most ``limit`` (O(limit) at any offset)."""
        async with self.reader.connect() as conn:
            return await jobs.image_page(conn, job, offset=offset, limit=limit)

    async def in_flight(self, user_id: str) -> InFlight:
        """The user's jobs not ended and their images queued or running (admission)."""
        async with self.reader.connect() as conn:
            return await quota.in_flight(conn, user_id)

    async def job_owner(self, job_pk: str) -> str | None:
        """The user whose job has the primary key ``job_pk`` (None: no such job)."""
        async with self.reader.connect() as conn:
            return await ownership.job_owner(conn, job_pk)

    async def attempt_page(
        self, job_pk: str, *, after: tuple[datetime, int] | None, limit: int
    ) -> list[AttemptRecord]:
        """Up to ``limit`` attempts by start after the ``(started_at, id)`` cursor ``after``."""
        async with self.reader.connect() as conn:
            return await jobs.attempts(conn, job_pk, after=after, limit=limit)

    async def result_keys(self, job_pk: str) -> set[str]:
        """The storage keys of the job's recorded results."""
        async with self.reader.connect() as conn:
            return await jobs.result_keys(conn, job_pk)

    async def attempts(self, job_pk: str) -> list[AttemptRecord]:
        async with self.reader.connect() as conn:
            return await jobs.attempts(conn, job_pk)

    async def sealed_key(self, job_pk: str) -> bytes | None:
        async with self.reader.connect() as conn:
            return await jobs.sealed_key(conn, job_pk)

    async def queue_depth(self) -> int:
        async with self.reader.connect() as conn:
            return await jobs.queue_depth(conn)

    # -- the worker's side (store.queue, store.outcomes) ------------------------------------

    async def claim(self, worker: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        return (await self.claim_batch(worker, limit, lease_seconds)).tasks

    async def claim_batch(self, worker: str, limit: int, lease_seconds: float) -> Claim:
        """Lease up to ``limit`` tasks that may start now (``queue.claim_batch``)."""
        if limit <= 0:
            return Claim([], None)
        async with self.engine.begin() as conn:  # first, alone: it locks no governor
            await queue.rescue_expired(conn, self.clock())
        async with self.engine.begin() as conn:
            return await queue.claim_batch(
                conn,
                self.clock,
                self.governor,
                worker=worker,
                limit=limit,
                lease_seconds=lease_seconds,
            )

    async def still_held(self, task: ClaimedTask) -> bool:
        """Whether this attempt still owns its task (checked right before a provider call)."""
        async with self.reader.connect() as conn:
            return await queue.still_held(conn, task)

    async def heartbeat(
        self, worker: str, image_ids: Sequence[int], lease_seconds: float
    ) -> set[tuple[int, int]]:
        """Extend this worker's leases; returns the ``(image id, fence)`` attempts it holds."""
        if not image_ids:
            return set()
        until = self.clock() + timedelta(seconds=lease_seconds)
        async with self.engine.begin() as conn:
            return await queue.heartbeat(conn, worker, image_ids, until)

    async def release(self, task: ClaimedTask) -> None:
        """Give a task back unfinished (worker draining): queued again, attempt not counted."""
        now = self.clock()
        async with self.engine.begin() as conn:
            await queue.release(conn, task, now)

    async def has_pending(self) -> bool:
        """Whether any image is queued or running (due now or later)."""
        async with self.reader.connect() as conn:
            return await queue.has_pending(conn)

    async def finish(self, task: ClaimedTask, outcome: Outcome) -> str:
        """Record the attempt's outcome if it still holds the task, else raise ``LeaseLost``;
        returns the job's status after the roll-up (``outcomes.finish``)."""
        async with self.engine.begin() as conn:
            return await outcomes.finish(conn, self.clock, task, outcome)

    async def end_call(
        self, task: ClaimedTask, sent_at: float, observation: Observation | None
    ) -> GovernorState | None:
        """The task's provider call is over: its window slot frees and the key's governor
        learns from what the call said (``outcomes.end_call``)."""
        now = self.clock()
        async with self.engine.begin() as conn:
            return await outcomes.end_call(
                conn,
                task,
                sent_at=sent_at,
                observation=observation,
                params=self.governor,
                now=now,
            )

    # -- user actions (store.actions) -------------------------------------------------------

    async def cancel(self, job_pk: str) -> str:
        """Cancel a job (idempotent); returns its status (``actions.cancel``)."""
        now = self.clock()
        async with self.engine.begin() as conn:
            return await actions.cancel(conn, job_pk, now)

    async def retry_failed(self, job_pk: str, sealed_key: bytes | None, new_key: str | None) -> int:
        """Queue the job's failed images again; returns how many (``actions.retry_failed``)."""
        now = self.clock()
        async with self.engine.begin() as conn:
            return await actions.retry_failed(
                conn,
                job_pk,
                sealed_key=sealed_key,
                new_key=new_key,
                defaults=self._defaults,
                now=now,
            )

    # -- governors and events ---------------------------------------------------------------

    async def governor_states(self, keys: Sequence[str] | None = None) -> list[GovernorView]:
        """The governors (all, or those of ``keys``) with their running tasks, for display."""
        async with self.reader.connect() as conn:
            return await governors.views(conn, keys)

    async def events_after(self, job_pk: str, after: int, limit: int = 500) -> list[EventRecord]:
        """The job's events past event ``after`` (``EventOutbox.events_after``)."""
        return await self.outbox.events_after(job_pk, after, limit)
