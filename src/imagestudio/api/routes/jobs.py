"""Job routes: thin; validation in ``intake``, reads and writes in the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from imagestudio.api.deps import ServicesDep, StoreDep, UserDep
from imagestudio.api.schemas import (
    CURSOR_PATTERN,
    ImagePage,
    JobOut,
    JobSummary,
    attempt_out,
    image_page_out,
    job_out,
    job_summary,
    parse_timeline_cursor,
    timeline_cursor,
)
from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES, JobStatus
from imagestudio.store.records import JobRecord

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
    status: Annotated[JobStatus | None, Query()] = None,
) -> dict[str, list[JobSummary]]:
    """The caller's jobs, newest first; ``status`` keeps those in that status."""
    found = status.value if status else None
    jobs = await store.list_jobs(user, limit=limit, offset=offset, status=found)
    return {"jobs": [job_summary(j) for j in jobs]}


@router.get("/{job_id}", response_model=JobOut)
async def get_job(store: StoreDep, user: UserDep, job_id: str) -> JobOut:
    progress = await store.progress(user, job_id)
    views = await store.governor_states([progress.job.provider_key])
    return job_out(progress, views[0] if views else None)


DEFAULT_PAGE, MAX_PAGE = 500, 5000
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


async def _light_job(store: StoreDep, user: UserDep, job_id: str) -> JobRecord:
    """The job without its result URLs: a page of a big job reads O(page), not O(job)."""
    return await store.get_job(user, job_id, urls=False)


LightJobDep = Annotated[JobRecord, Depends(_light_job)]


@router.get("/{job_id}/images", response_model=ImagePage)
async def get_images(
    services: ServicesDep,
    job: LightJobDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: PageLimit = DEFAULT_PAGE,
) -> ImagePage:
    """Images by position, ``limit`` from ``offset`` (the position of the first); each
    queued one with ``waiting_reason``, why it has not started (``policy.waiting``)."""
    store = services.store
    page = await store.image_page(job, offset=offset, limit=limit)
    reasons = await store.waiting_reasons(
        job, page.items, limit=services.settings.worker_concurrency
    )
    return image_page_out(page, f"{API_PREFIX}/jobs/{job.job_id}/images", reasons)


@router.get("/{job_id}/timeline", response_model=dict[str, Any])
async def get_timeline(
    store: StoreDep,
    job: LightJobDep,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    limit: PageLimit = DEFAULT_PAGE,
) -> dict[str, Any]:
    """Attempts by start, ``limit`` after ``cursor`` (the last page's ``next_cursor``)."""
    after = parse_timeline_cursor(cursor) if cursor else None
    found = await store.attempt_page(job.id, after=after, limit=limit)
    following = timeline_cursor(found[-1]) if len(found) == limit else None
    base = f"{API_PREFIX}/jobs/{job.job_id}/timeline"
    return {
        "job_id": job.job_id,
        "created_at": job.created_at,
        "calls": [attempt_out(a) for a in found],
        "limit": limit,
        "next_cursor": following,
        "next": None if following is None else f"{base}?cursor={following}&limit={limit}",
    }


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
    job: LightJobDep,
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
            current = await store.get_job(user, job_id, urls=False)
            # An ended job's last events may still wait behind an older open transaction.
            if current.status in TERMINAL_JOB_STATUSES and not await outbox.has_events_after(
                job.id, after
            ):
                yield ServerSentEvent(event="end", data={"status": current.status})
                return
            await asyncio.sleep(services.settings.events_poll_seconds)
