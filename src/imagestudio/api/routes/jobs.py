"""Job routes: thin; validation in ``intake``, reads and writes in the store."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status

from imagestudio.api.deps import ServicesDep, StoreDep, UserDep
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
from imagestudio.submission import submit

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut)
async def post_job(
    services: ServicesDep,
    user: UserDep,
    response: Response,
    payload: Annotated[dict[str, Any], Body()],
) -> JobOut:
    result = await submit(services, payload, user)
    if not result.created:
        response.status_code = status.HTTP_200_OK
    else:
        services.wake_workers()
    progress = await services.store.progress(result.job.user_id, result.job.job_id)
    return job_out(progress)


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
    return job_out(await store.progress(user, job_id))


@router.get("/{job_id}/images", response_model=dict[str, list[ImageOut]])
async def get_images(store: StoreDep, user: UserDep, job_id: str) -> dict[str, list[ImageOut]]:
    job = await store.get_job(user, job_id)
    return {"images": [image_out(i) for i in await store.images(job.id)]}


@router.get("/{job_id}/timeline", response_model=dict[str, Any])
async def get_timeline(store: StoreDep, user: UserDep, job_id: str) -> dict[str, Any]:
    job = await store.get_job(user, job_id)
    calls: list[AttemptOut] = [attempt_out(a) for a in await store.attempts(job.id)]
    return {"job_id": job.job_id, "created_at": job.created_at, "calls": calls}
