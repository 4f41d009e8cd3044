"""Job routes: thin; validation in ``intake``, reads and writes in the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from imagestudio.api.deps import JobDep, ServicesDep, StoreDep, UserDep
from imagestudio.api.schemas import (
    AttemptOut,
    ImageOut,
    JobOut,
    JobSummary,
    attempt_out,
    image_out,
    job_out,
    job_summary,
)
from imagestudio.domain import TERMINAL_JOB_STATUSES

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut)
async def post_job(
    services: ServicesDep,
    user: UserDep,
    response: Response,
    payload: Annotated[dict[str, Any], Body()],
) -> JobOut:
    submitted = await services.jobs.submit(payload, user)
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
    return job_out(submitted.progress)


@router.get("", response_model=dict[str, list[JobSummary]])
async def list_jobs(
    store: StoreDep,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, list[JobSummary]]:
    jobs = await store.list_jobs(user, limit=limit, offset=offset)
    return {"jobs": [job_summary(j) for j in jobs]}


@router.get("/{job_id}", response_model=JobOut)
async def get_job(store: StoreDep, user: UserDep, job_id: str) -> JobOut:
    progress = await store.progress(user, job_id)
    views = await store.governor_states([progress.job.provider_key])
    return job_out(progress, views[0] if views else None)


@router.get("/{job_id}/images", response_model=dict[str, list[ImageOut]])
async def get_images(store: StoreDep, job: JobDep) -> dict[str, list[ImageOut]]:
    return {"images": [image_out(i) for i in await store.images(job.id)]}


@router.get("/{job_id}/timeline", response_model=dict[str, Any])
async def get_timeline(store: StoreDep, job: JobDep) -> dict[str, Any]:
    calls: list[AttemptOut] = [attempt_out(a) for a in await store.attempts(job.id)]
    return {"job_id": job.job_id, "created_at": job.created_at, "calls": calls}


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def cancel_job(services: ServicesDep, user: UserDep, job_id: str) -> JobOut:
    """Queued images end ``cancelled`` now; running calls are aborted within seconds."""
    return job_out(await services.jobs.cancel(user, job_id))


class RetryBody(BaseModel):
    api_key: str | None = Field(default=None, min_length=1)


class RetryOut(BaseModel):
    requeued: int
    job: JobOut


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=RetryOut)
async def retry_job(
    services: ServicesDep, user: UserDep, job_id: str, body: RetryBody | None = None
) -> RetryOut:
    """Queue the failed images again (fresh attempts); succeeded ones are not redone."""
    retried = await services.jobs.retry(user, job_id, body.api_key if body else None)
    return RetryOut(requeued=retried.requeued, job=job_out(retried.progress))


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    request: Request,
    services: ServicesDep,
    user: UserDep,
    job: JobDep,
    job_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Progress as Server-Sent Events; reconnecting with ``Last-Event-ID`` resumes after it.

    The first event (``snapshot``, no id) is the whole job; then one event per change
    (``image``, ``job``); the stream ends with ``end`` once the job has ended.
    """
    store, outbox = services.store, services.store.outbox
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    yield ServerSentEvent(event="snapshot", data=job_out(await store.progress(user, job_id)))
    while not await request.is_disconnected():
        events = await outbox.events_after(job.id, after)
        for event in events:
            after = event.id
            yield ServerSentEvent(id=str(event.id), event=event.type, data=event.data)
        if not events:
            current = await store.get_job(user, job_id)
            # An ended job's last events may still wait behind an older open transaction.
            if current.status in TERMINAL_JOB_STATUSES and not await outbox.has_events_after(
                job.id, after
            ):
                yield ServerSentEvent(event="end", data={"status": current.status})
                return
            await asyncio.sleep(services.settings.events_poll_seconds)
