"""Shapes of the API's answers (built from store records; no I/O)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from imagestudio.domain import API_PREFIX
from imagestudio.store.records import (
    AttemptRecord,
    GovernorView,
    ImageRecord,
    JobProgress,
    JobRecord,
    Page,
)


class Counts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class SkuProgress(Counts):
    sku: str


class GovernorOut(BaseModel):
    """Why an image may be waiting: the provider key's window, pace and cooldown."""

    window: float
    in_flight: int
    pace_per_minute: float | None
    cooldown_seconds: float
    cooldown_cause: str | None = None  # what the provider said that set the cooldown
    rate_limited: int
    pinned: bool


class JobOut(BaseModel):
    id: str
    job_id: str
    user_id: str
    mode: str
    status: str
    counts: Counts
    skus: list[SkuProgress]
    skus_truncated: bool = False
    result_image_urls: list[str]
    error: str | None
    output: dict[str, Any]
    provider: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    links: dict[str, str]
    governor: GovernorOut | None = None


class JobSummary(BaseModel):
    id: str
    job_id: str
    user_id: str
    status: str
    total: int
    completed: int
    error: str | None
    created_at: datetime
    updated_at: datetime


class ImageOut(BaseModel):
    position: int
    sku: str
    stem: str
    name: str
    source_url: str
    status: str
    attempts: int
    provider_calls: int
    rate_limit_waits: int
    prompt: str
    result_url: str | None
    error: str | None
    error_kind: str | None
    queued_until: datetime | None
    first_started_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class ImagePage(BaseModel):
    """One page of a job's images by position; ``next_offset`` is null on the last page."""

    images: list[ImageOut]
    total: int
    offset: int
    limit: int
    next_offset: int | None
    next: str | None


class AttemptOut(BaseModel):
    position: int
    sku: str
    stem: str
    attempt: int
    worker: str
    start: datetime
    end: datetime | None
    seconds: float | None
    call_start: datetime | None
    call_end: datetime | None
    call_seconds: float | None
    outcome: str | None
    error: str | None
    wait_seconds: float | None


def governor_out(view: GovernorView | None) -> GovernorOut | None:
    if view is None:
        return None
    state = view.state
    rate = state.effective_rate
    cooldown = max(0.0, state.cooldown_until - time.time())
    return GovernorOut(
        window=round(state.effective_window, 2),
        in_flight=view.in_flight,
        pace_per_minute=round(rate * 60, 1) if rate else None,
        cooldown_seconds=round(cooldown, 3),
        cooldown_cause=state.cooldown_cause if cooldown > 0 else None,
        rate_limited=state.rate_limited,
        pinned=state.pinned_window is not None or state.pinned_rate is not None,
    )


def job_out(progress: JobProgress, governor: GovernorView | None = None) -> JobOut:
    job = progress.job
    base = f"{API_PREFIX}/jobs/{job.job_id}"
    return JobOut(
        id=job.id,
        job_id=job.job_id,
        user_id=job.user_id,
        mode=job.mode,
        status=job.status,
        counts=Counts(total=job.total, **progress.counts),
        skus=[
            SkuProgress(sku=sku, total=sum(c.values()), **c) for sku, c in progress.per_sku.items()
        ],
        skus_truncated=progress.skus_truncated,
        result_image_urls=progress.result_image_urls,
        error=job.error,
        output={
            "width": job.output.width,
            "height": job.output.height,
            "format": job.output.format,
            "quality": job.output.quality,
        },
        provider={"api_base": job.api_base, "model": job.model, "api_style": job.api_style},
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        links={
            "self": base,
            "images": f"{base}/images",
            "events": f"{base}/events",
            "timeline": f"{base}/timeline",
        },
        governor=governor_out(governor),
    )


def job_summary(job: JobRecord) -> JobSummary:
    return JobSummary(
        id=job.id,
        job_id=job.job_id,
        user_id=job.user_id,
        status=job.status,
        total=job.total,
        completed=job.counts["succeeded"],
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def image_out(image: ImageRecord) -> ImageOut:
    waiting = image.status == "queued" and image.first_started_at is not None
    return ImageOut(
        position=image.position,
        sku=image.sku,
        stem=image.stem,
        name=image.name,
        source_url=image.source_url,
        status=image.status,
        attempts=image.attempts,
        provider_calls=image.calls,
        rate_limit_waits=image.snoozes,
        prompt=image.prompt,
        result_url=image.result_url,
        error=image.error,
        error_kind=image.error_kind,
        queued_until=image.run_after if waiting else None,
        first_started_at=image.first_started_at,
        started_at=image.started_at,
        finished_at=image.finished_at,
    )


def image_page_out(page: Page[ImageRecord], base: str) -> ImagePage:
    """A page of images; ``next`` is the next page's path (``base`` is the images route)."""
    after = page.next_offset
    return ImagePage(
        images=[image_out(i) for i in page.items],
        total=page.total,
        offset=page.offset,
        limit=page.limit,
        next_offset=after,
        next=None if after is None else f"{base}?offset={after}&limit={page.limit}",
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CURSOR_PATTERN = r"^\d{1,18}\.\d{1,18}$"  # both parts fit in int64


_EVENT_ID = re.compile(r"[0-9]{1,18}")


def timeline_cursor(attempt: AttemptRecord) -> str:
    """The position after ``attempt`` in the timeline's order: ``<start in µs>.<id>``."""
    micros = (attempt.started_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{attempt.id}"


def parse_timeline_cursor(cursor: str) -> tuple[datetime, int] | None:
    """``timeline_cursor`` back to ``(started_at, id)``; None when its time is past the year
    9999 (the route checks ``CURSOR_PATTERN`` and answers 422)."""
    micros, _, attempt_id = cursor.partition(".")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(attempt_id)
    except OverflowError:
        return None


def last_event_id(header: str | None) -> int:
    """The event id a reconnecting SSE client sends, or 0 (from the start) when the header
    is missing or is not 1-18 ASCII digits (so it fits in int64): a bad id is ignored."""
    if header is None or _EVENT_ID.fullmatch(header) is None:
        return 0
    return int(header)


def attempt_out(attempt: AttemptRecord) -> AttemptOut:
    seconds = (attempt.ended_at - attempt.started_at).total_seconds() if attempt.ended_at else None
    call_seconds = None
    if attempt.call_started_at and attempt.call_ended_at:
        call_seconds = (attempt.call_ended_at - attempt.call_started_at).total_seconds()
    return AttemptOut(
        position=attempt.position,
        sku=attempt.sku,
        stem=attempt.stem,
        attempt=attempt.fence,
        worker=attempt.worker,
        start=attempt.started_at,
        end=attempt.ended_at,
        seconds=seconds,
        call_start=attempt.call_started_at,
        call_end=attempt.call_ended_at,
        call_seconds=call_seconds,
        outcome=attempt.outcome,
        error=attempt.error,
        wait_seconds=attempt.wait_seconds,
    )
