"""Job routes: thin; validation in ``intake``, reads and writes in the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    status,
)
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from imagestudio.api.deps import ServicesDep, SignerDep, StoreDep, UserDep
from imagestudio.api.schemas import (
    CURSOR_PATTERN,
    ImagePage,
    JobOut,
    JobSummary,
    attempt_out,
    image_page_out,
    job_out,
    job_summary,
    last_event_id,
    parse_timeline_cursor,
    timeline_cursor,
)
from imagestudio.api.signed import signed_event, signed_job, signed_page
from imagestudio.domain import API_PREFIX, TERMINAL_JOB_STATUSES, JobStatus
from imagestudio.jobs.intake import API_KEY_PATTERN
from imagestudio.store.records import JobRecord

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_OFFSET = 10**9  # past any list; offset + a page stays in int32 (the position column)
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


# The body is read as bytes and parsed inside intake's thread, so the payload's objects (tens
# of MB for 100,000 images) die there rather than living on the request for its whole answer.
_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "title": "Payload"}}},
    }
}


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=JobOut, openapi_extra=_JSON_BODY
)
async def post_job(
    services: ServicesDep,
    user: UserDep,
    signer: SignerDep,
    request: Request,
    response: Response,
) -> JobOut:
    submitted = await services.jobs.submit(await request.body(), user)
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
    return signed_job(job_out(submitted.progress), signer)


@router.get("", response_model=dict[str, list[JobSummary]])
async def list_jobs(
    store: StoreDep,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
    status: Annotated[JobStatus | None, Query()] = None,
) -> dict[str, list[JobSummary]]:
    """The caller's jobs, newest first; ``status`` keeps those in that status."""
    found = status.value if status else None
    jobs = await store.list_jobs(user, limit=limit, offset=offset, status=found)
    return {"jobs": [job_summary(j) for j in jobs]}


@router.get("/{job_id}", response_model=JobOut)
async def get_job(store: StoreDep, user: UserDep, signer: SignerDep, job_id: str) -> JobOut:
    progress = await store.progress(user, job_id)
    views = await store.governor_states([progress.job.provider_key])
    deliveries = await store.webhook_deliveries(progress.job.id)
    return signed_job(job_out(progress, views[0] if views else None, deliveries), signer)


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
    signer: SignerDep,
    offset: Offset = 0,
    limit: PageLimit = DEFAULT_PAGE,
) -> ImagePage:
    """Images by position, ``limit`` from ``offset`` (the position of the first); each
    queued one with ``waiting_reason``, why it has not started (``policy.waiting``)."""
    store = services.store
    page = await store.image_page(job, offset=offset, limit=limit)
    reasons = await store.waiting_reasons(
        job, page.items, limit=services.settings.worker_concurrency
    )
    base = f"{API_PREFIX}/jobs/{job.job_id}/images"
    return signed_page(image_page_out(page, base, reasons), signer)


@router.get("/{job_id}/timeline", response_model=dict[str, Any])
async def get_timeline(
    store: StoreDep,
    job: LightJobDep,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    limit: PageLimit = DEFAULT_PAGE,
) -> dict[str, Any]:
    """Attempts by start, ``limit`` after ``cursor`` (the last page's ``next_cursor``)."""
    after = parse_timeline_cursor(cursor) if cursor else None
    if cursor and after is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {
                    "loc": ["query", "cursor"],
                    "field": "query.cursor",
                    "msg": "the cursor's time is out of range",
                    "type": "value_error",
                }
            ],
        )
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
async def cancel_job(
    services: ServicesDep, user: UserDep, signer: SignerDep, job_id: str
) -> JobOut:
    """Queued images end ``cancelled`` now; running calls are aborted within seconds."""
    return signed_job(job_out(await services.jobs.cancel(user, job_id)), signer)


class RetryBody(BaseModel):
    api_key: str | None = Field(default=None, pattern=f"^{API_KEY_PATTERN.pattern}$")


class RetryOut(BaseModel):
    requeued: int
    job: JobOut


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=RetryOut)
async def retry_job(
    services: ServicesDep,
    user: UserDep,
    signer: SignerDep,
    job_id: str,
    body: RetryBody | None = None,
) -> RetryOut:
    """Queue the failed images again (fresh attempts); succeeded ones are not redone."""
    retried = await services.jobs.retry(user, job_id, body.api_key if body else None)
    return RetryOut(requeued=retried.requeued, job=signed_job(job_out(retried.progress), signer))


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    request: Request,
    services: ServicesDep,
    user: UserDep,
    signer: SignerDep,
    job: LightJobDep,
    job_id: str,
    last_event_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Progress as Server-Sent Events; reconnecting with ``Last-Event-ID`` resumes after it.

    The first event (``snapshot``, no id) is the whole job; then one event per change
    (``image``, ``job``); the stream ends with ``end`` once the job has ended.
    """
    store, outbox = services.store, services.store.outbox
    after = last_event_id(last_event_header)
    snapshot = signed_job(job_out(await store.progress(user, job_id)), signer)
    yield ServerSentEvent(event="snapshot", data=snapshot)
    while not await request.is_disconnected():
        events = await outbox.events_after(job.id, after)
        for event in events:
            after = event.id
            data = signed_event(event.data, signer)
            yield ServerSentEvent(id=str(event.id), event=event.type, data=data)
        if not events:
            current = await store.get_job(user, job_id, urls=False)
            # An ended job's last events may still wait behind an older open transaction.
            if current.status in TERMINAL_JOB_STATUSES and not await outbox.has_events_after(
                job.id, after
            ):
                yield ServerSentEvent(event="end", data={"status": current.status})
                return
            await asyncio.sleep(services.settings.events_poll_seconds)
