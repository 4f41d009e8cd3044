"""Jobs: intake (a job and all its images in one transaction), the reads behind the API, and
the roll-up that recomputes a job's status from its images.

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import TERMINAL_JOB_STATUSES, ImageStatus, JobSpec, JobStatus
from imagestudio.errors import JobConflict, JobNotFound
from imagestudio.policy.rollup import rollup_status
from imagestudio.store import governors
from imagestudio.store.records import (
    AttemptRecord,
    ImageRecord,
    JobProgress,
    JobRecord,
    SubmitResult,
)
from imagestudio.store.rows import attempt_record, image_record, job_record
from imagestudio.store.tables import ai_job, ai_job_attempt, ai_job_image, ai_job_secret

QUEUED = ImageStatus.QUEUED.value

# -- intake -----------------------------------------------------------------------------------


async def insert(
    conn: AsyncConnection,
    spec: JobSpec,
    sealed_key: bytes,
    *,
    defaults: governors.Defaults,
    now: datetime,
) -> tuple[str, bool]:
    """Insert the job, its images, its sealed key and its governor; ``(job_id, created)``.

    The unique ``(user_id, job_id)`` constraint with ``ON CONFLICT DO NOTHING`` makes
    concurrent identical submissions race-free: exactly one inserts, the others find its job.
    """
    pk = uuid.uuid4().hex
    job_id = spec.job_id or pk
    inserted = await conn.scalar(_insert_job(conn, spec, pk, job_id, now))
    if inserted is None:
        return job_id, False
    await conn.execute(ai_job_image.insert(), _image_rows(spec, pk, now))
    await conn.execute(ai_job_secret.insert().values(job_pk=pk, api_key_enc=sealed_key))
    await governors.ensure(
        conn,
        key=_provider_key(spec),
        api_base=spec.provider.api_base,
        model=spec.provider.model,
        defaults=defaults,
        now=now,
    )
    return job_id, True


def submitted(job: JobRecord, spec: JobSpec, *, created: bool) -> SubmitResult:
    """The answer to a submission; a used ``job_id`` with another payload is a conflict."""
    if not created and job.payload_hash != spec.payload_hash:
        raise JobConflict(
            f"job_id {job.job_id!r} was already used for a different payload; "
            "use a new job_id for a new job"
        )
    return SubmitResult(job=job, created=created)


def _provider_key(spec: JobSpec) -> str:
    return governors.provider_key(spec.provider.api_base, spec.api_key, spec.provider.model)


def _insert_job(conn: AsyncConnection, spec: JobSpec, pk: str, job_id: str, now: datetime) -> Any:
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
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
        "provider_key": _provider_key(spec),
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
    return stmt.on_conflict_do_nothing(index_elements=["user_id", "job_id"]).returning(ai_job.c.id)


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


# -- reads ------------------------------------------------------------------------------------


async def job_by_key(conn: AsyncConnection, user_id: str | None, job_id: str) -> JobRecord:
    """The job ``job_id`` of ``user_id``; ``None`` (local mode) means any user, newest."""
    query = select(ai_job).where(ai_job.c.job_id == job_id)
    if user_id is not None:
        query = query.where(ai_job.c.user_id == user_id)
    query = query.order_by(ai_job.c.created_at.desc()).limit(1)
    row = (await conn.execute(query)).first()
    if row is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job_record(row)


async def jobs_by_pk(conn: AsyncConnection, job_pks: Sequence[str]) -> dict[str, JobRecord]:
    rows = (await conn.execute(select(ai_job).where(ai_job.c.id.in_(list(job_pks))))).all()
    return {r.id: job_record(r) for r in rows}


async def progress(conn: AsyncConnection, user_id: str | None, job_id: str) -> JobProgress:
    """The job with its images counted by status, overall and per SKU (in payload order)."""
    job = await job_by_key(conn, user_id, job_id)
    query = (
        select(ai_job_image.c.sku, ai_job_image.c.status, func.count())
        .where(ai_job_image.c.job_pk == job.id)
        .group_by(ai_job_image.c.sku, ai_job_image.c.status)
    )
    rows = (await conn.execute(query)).all()
    counts = {s.value: 0 for s in ImageStatus}
    per_sku: dict[str, dict[str, int]] = {}
    for sku, status, n in rows:
        counts[status] += n
        per_sku.setdefault(sku, {s.value: 0 for s in ImageStatus})[status] += n
    ordered = {sku: per_sku[sku] for sku in _sku_order(job) if sku in per_sku}
    return JobProgress(job=job, counts=counts, per_sku=ordered)


def _sku_order(job: JobRecord) -> list[str]:
    options = job.config.get("options") or {}
    return [str(s) for s in options.get("skus") or []] or [str(job.config.get("sku"))]


async def list_jobs(
    conn: AsyncConnection, user_id: str | None, *, limit: int, offset: int
) -> list[JobRecord]:
    query = select(ai_job).order_by(ai_job.c.created_at.desc(), ai_job.c.id)
    if user_id is not None:
        query = query.where(ai_job.c.user_id == user_id)
    query = query.limit(limit).offset(offset)
    return [job_record(r) for r in (await conn.execute(query)).all()]


async def images(conn: AsyncConnection, job_pk: str) -> list[ImageRecord]:
    query = (
        select(ai_job_image)
        .where(ai_job_image.c.job_pk == job_pk)
        .order_by(ai_job_image.c.position)
    )
    return [image_record(r) for r in (await conn.execute(query)).all()]


async def result_keys(conn: AsyncConnection, job_pk: str) -> set[str]:
    """The storage keys of the job's recorded results."""
    img = ai_job_image
    query = select(img.c.result_key).where(img.c.job_pk == job_pk, img.c.result_key.is_not(None))
    return {str(key) for key in (await conn.scalars(query)).all()}


async def attempts(conn: AsyncConnection, job_pk: str) -> list[AttemptRecord]:
    a, i = ai_job_attempt, ai_job_image
    query = (
        select(a, i.c.position, i.c.sku, i.c.stem)
        .join(i, i.c.id == a.c.image_id)
        .where(a.c.job_pk == job_pk)
        .order_by(a.c.started_at, a.c.id)
    )
    return [attempt_record(r) for r in (await conn.execute(query)).all()]


async def sealed_key(conn: AsyncConnection, job_pk: str) -> bytes | None:
    value = await conn.scalar(
        select(ai_job_secret.c.api_key_enc).where(ai_job_secret.c.job_pk == job_pk)
    )
    return bytes(value) if value is not None else None


async def queue_depth(conn: AsyncConnection) -> int:
    value = await conn.scalar(select(func.count()).where(ai_job_image.c.status == QUEUED))
    return int(value or 0)


# -- the job row under change -----------------------------------------------------------------


async def lock(conn: AsyncConnection, job_pk: str) -> None:
    """Serialize the job's roll-ups (PostgreSQL; SQLite's writers are serialized already)."""
    if conn.dialect.name == "postgresql":
        # FOR NO KEY UPDATE: serializes the job's roll-ups without blocking the foreign-key
        # checks of a claim inserting attempt and event rows (which would deadlock).
        await conn.execute(
            select(ai_job.c.id).where(ai_job.c.id == job_pk).with_for_update(key_share=True)
        )


async def rollup(conn: AsyncConnection, job_pk: str, now: datetime) -> str:
    """Recompute the job's status, ordered result URLs and ``updated_at`` from its images;
    a job that ends has its sealed key erased. Returns the new status."""
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
