"""Rows to records: how a database row becomes the plain value the store hands out. No I/O."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from imagestudio.domain import OutputSpec
from imagestudio.store import counts
from imagestudio.store.records import (
    AttemptRecord,
    ClaimedTask,
    EventRecord,
    ImageRecord,
    JobRecord,
)


def job_record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        user_id=row.user_id,
        job_id=row.job_id,
        mode=row.mode,
        status=row.status,
        total=row.total,
        counts=counts.of(row),
        payload_hash=row.payload_hash,
        result_image_urls=_urls(row),
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


def _urls(row: Row[Any]) -> list[str] | None:
    """The row's result URLs, or ``None`` when the query left the column out."""
    if "result_image_urls" not in row._fields:
        return None
    return list(row.result_image_urls or [])


def image_record(row: Row[Any]) -> ImageRecord:
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


def attempt_record(row: Row[Any]) -> AttemptRecord:
    """An ``ai_job_attempt`` row joined with its image's ``position``, ``sku`` and ``stem``."""
    return AttemptRecord(
        id=row.id,
        image_id=row.image_id,
        position=row.position,
        sku=row.sku,
        stem=row.stem,
        fence=row.fence,
        worker=row.worker,
        started_at=row.started_at,
        ended_at=row.ended_at,
        call_started_at=row.call_started_at,
        call_ended_at=row.call_ended_at,
        outcome=row.outcome,
        error=row.error,
        wait_seconds=row.wait_seconds,
    )


def claimed(row: Row[Any], job: JobRecord, prompt: str) -> ClaimedTask:
    """A just-leased ``ai_job_image`` row (its prompt's text beside it) as the task its
    worker runs."""
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
        prompt=prompt,
        first_started_at=row.first_started_at,
        job=job,
    )


def event_record(row: Row[Any]) -> EventRecord:
    return EventRecord(
        id=row.id, type=row.type, data=row.data, created_at=row.created_at, job_pk=row.job_pk
    )
