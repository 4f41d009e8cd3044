"""What a user does to a job, one call each: submit, cancel, retry the failed images.

Each route calls one method here; the method validates, talks to the store and to storage,
and says whether workers have new work. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imagestudio.domain import JobSpec
from imagestudio.errors import (
    JobNotFound,
    PayloadInvalid,
    SourceUnavailable,
    TooMuchInFlight,
    UnsafeURL,
)
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, gc_paused, parse_payload
from imagestudio.policy.quota import Quota, refusal
from imagestudio.security.crypto import SecretBox
from imagestudio.security.netguard import Resolver, ensure_public_url, system_resolve
from imagestudio.security.redact import redact
from imagestudio.storage import ResultStorage, sweep
from imagestudio.store.records import JobProgress, JobRecord
from imagestudio.store.store import Store

LOCAL_USER = "local"
RELEASE_AFTER_IMAGES = 5000  # an intake this big then calls ``release_memory``


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Submitted:
    progress: JobProgress
    created: bool

    @property
    def job(self) -> JobRecord:
        return self.progress.job


@dataclass(frozen=True, slots=True)
class Retried:
    requeued: int
    progress: JobProgress


class JobService:
    """The user's side of jobs. ``on_new_work`` is told when images were queued (so
    in-process workers claim at once instead of at their next poll); ``release_memory`` runs
    in a thread after a big intake, once its payload's objects are freed."""

    def __init__(
        self,
        store: Store,
        storage: ResultStorage,
        box: SecretBox,
        *,
        limits: IntakeLimits,
        quota: Quota | None = None,
        quota_retry_after: float = 30.0,
        allow_list: Sequence[str] = (),
        resolver: Resolver = system_resolve,
        on_new_work: Callable[[], None] = _nothing,
        release_memory: Callable[[], None] = _nothing,
    ) -> None:
        self.store, self.storage, self.box = store, storage, box
        self.limits, self.allow_list, self.on_new_work = limits, list(allow_list), on_new_work
        self.release_memory = release_memory
        self.quota, self.quota_retry_after = quota or Quota(), quota_retry_after
        self.resolver = resolver  # the submission check's (the connect-time check is Outbound's)

    async def submit(self, raw: bytes | dict[str, Any], user: str | None) -> Submitted:
        """Validate, check the provider URL, seal the key and write the job once.

        ``raw`` is the JSON body (bytes) or its parsed object. ``user`` is the token's user;
        ``None`` in local mode, where the payload's is taken. The same payload again returns
        the existing job (``created`` false).
        """
        # Validating a 100,000-image payload takes about a second of CPU: off the event loop,
        # so in-process workers keep their heartbeats and other requests their answers.
        spec = await asyncio.to_thread(self._spec, raw, user)
        try:
            await ensure_public_url(spec.provider.api_base, self.allow_list, self.resolver)
        except (UnsafeURL, SourceUnavailable) as exc:  # refused, or its name did not resolve
            raise PayloadInvalid("options.api_base", redact(exc.message)) from exc
        await self._admit(spec)
        result = await self.store.submit(spec, self.box.seal(spec.api_key))
        if len(spec.images) >= RELEASE_AFTER_IMAGES:
            del spec
            await asyncio.to_thread(self.release_memory)
        if result.created:
            self.on_new_work()
        progress = await self.store.progress(result.job.user_id, result.job.job_id)
        return Submitted(progress=progress, created=result.created)

    async def _admit(self, spec: JobSpec) -> None:
        """Refuse a new job past the user's quota of work in flight (``TooMuchInFlight``).
        A job already submitted is not new: its resubmission returns it whatever the quota.
        A check before the insert: concurrent submissions may pass it together."""
        if spec.job_id is not None:
            with contextlib.suppress(JobNotFound):
                await self.store.get_job(spec.user_id, spec.job_id, urls=False)
                return
        in_flight = await self.store.in_flight(spec.user_id)
        problem = refusal(in_flight, len(spec.images), self.quota)
        if problem is not None:
            raise TooMuchInFlight(problem, retry_after=self.quota_retry_after)

    def _spec(self, raw: bytes | dict[str, Any], user: str | None) -> JobSpec:
        with gc_paused():
            payload = parse_payload(raw)
            del raw  # the parsed JSON is dropped as soon as the model holds it
            if user is not None and payload.user_id not in (None, user):
                raise PayloadInvalid("user_id", "does not match the user of the bearer token")
            owner = user or payload.user_id or LOCAL_USER
            return build_job_spec(payload, user_id=owner, limits=self.limits)

    async def cancel(self, user: str | None, job_id: str) -> JobProgress:
        """Queued images end ``cancelled`` now; running calls are aborted within seconds
        (their workers see the lease gone); images already done are kept. Files of attempts
        that will never be recorded are removed."""
        job = await self.store.get_job(user, job_id)
        await self.store.cancel(job.id)
        await sweep(self.storage, f"{job.id}/", await self.store.result_keys(job.id))
        return await self.store.progress(user, job_id)

    async def retry(self, user: str | None, job_id: str, api_key: str | None) -> Retried:
        """Queue the failed images again with fresh attempts; succeeded ones are not redone.
        The key was erased when the job ended, so a retry of an ended job brings it again."""
        job = await self.store.get_job(user, job_id)
        sealed = self.box.seal(api_key) if api_key else None
        requeued = await self.store.retry_failed(job.id, sealed, api_key)
        if requeued:
            self.on_new_work()
        return Retried(requeued=requeued, progress=await self.store.progress(user, job_id))
