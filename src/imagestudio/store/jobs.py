"""Jobs: intake (a job and all its images in one transaction), the reads behind the API, and
the roll-up that recomputes a job's status from the counts on its row.

Nothing here that runs per claim, per completion or per poll reads O(images) of a big job: the
job records leave out ``config`` (the whole payload), the claim's and the list's leave out
``result_image_urls``; counts come from the job row; per-SKU counts, result URLs and image
pages are bounded (docs/design.md "Big jobs").

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.domain import TERMINAL_JOB_STATUSES, ImageStatus, JobSpec, JobStatus
from imagestudio.errors import JobConflict, JobNotFound
from imagestudio.policy.rollup import failed_job_error, rollup_status
from imagestudio.store import bulk, counts, governors
from imagestudio.store.records import (
    AttemptRecord,
    ImageRecord,
    JobProgress,
    JobRecord,
    Page,
    SubmitResult,
)
from imagestudio.store.rows import attempt_record, image_record, job_record
from imagestudio.store.tables import (
    ai_job,
    ai_job_attempt,
    ai_job_image,
    ai_job_prompt,
    ai_job_secret,
)

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
    inserted = await conn.scalar(_INSERT_JOB[conn.dialect.name], _job_row(spec, pk, job_id, now))
    if inserted is None:
        return job_id, False
    await bulk.insert_images(conn, pk, spec.images, now)
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


# Values go to these statements as execution parameters, never inside them: SQLAlchemy's
# compiled cache keeps the first statement of each shape with the values bound into it, so a
# 100,000-image job's payload (about 40 MB as Python objects) would live as long as the process.
_INSERT_JOB = {
    name: dialect_insert(ai_job)
    .on_conflict_do_nothing(index_elements=["user_id", "job_id"])
    .returning(ai_job.c.id)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


def _job_row(spec: JobSpec, pk: str, job_id: str, now: datetime) -> dict[str, Any]:
    return {
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
        "n_queued": len(spec.images),
        "urls_refreshed_at": now,
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


# -- reads ------------------------------------------------------------------------------------

SKU_DETAIL_MAX_IMAGES = 5000  # per-SKU counts (one GROUP BY over the images) up to this size
_LIGHT = [c for c in ai_job.c if c.name not in ("config", "result_image_urls")]
_WITH_URLS = [*_LIGHT, ai_job.c.result_image_urls]


async def job_by_key(
    conn: AsyncConnection, user_id: str | None, job_id: str, *, urls: bool = True
) -> JobRecord:
    """The job ``job_id`` of ``user_id``; ``None`` (local mode) means any user, newest.
    ``urls=False`` leaves ``result_image_urls`` out (``None``)."""
    query = select(*(_WITH_URLS if urls else _LIGHT)).where(ai_job.c.job_id == job_id)
    if user_id is not None:
        query = query.where(ai_job.c.user_id == user_id)
    query = query.order_by(ai_job.c.created_at.desc()).limit(1)
    row = (await conn.execute(query)).first()
    if row is None:
        raise JobNotFound(f"no job {job_id!r}")
    return job_record(row)


async def jobs_by_pk(conn: AsyncConnection, job_pks: Sequence[str]) -> dict[str, JobRecord]:
    """The claim's job records: no payload, no result URLs (O(1) per job, not O(images))."""
    rows = (await conn.execute(select(*_LIGHT).where(ai_job.c.id.in_(list(job_pks))))).all()
    return {r.id: job_record(r) for r in rows}


async def progress(conn: AsyncConnection, user_id: str | None, job_id: str) -> JobProgress:
    """The job with its counts (from its row) and, up to ``SKU_DETAIL_MAX_IMAGES`` images,
    its counts per SKU in payload order."""
    job = await job_by_key(conn, user_id, job_id)
    if job.total > SKU_DETAIL_MAX_IMAGES:
        return JobProgress(job=job, counts=job.counts, skus_truncated=True)
    img = ai_job_image
    query = (
        select(img.c.sku, img.c.status, func.count(), func.min(img.c.position))
        .where(img.c.job_pk == job.id)
        .group_by(img.c.sku, img.c.status)
    )
    per_sku: dict[str, dict[str, int]] = {}
    first: dict[str, int] = {}
    for sku, status, n, position in (await conn.execute(query)).all():
        per_sku.setdefault(sku, {s.value: 0 for s in ImageStatus})[status] += n
        first[sku] = min(first.get(sku, position), position)
    ordered = {sku: per_sku[sku] for sku in sorted(per_sku, key=first.__getitem__)}
    return JobProgress(job=job, counts=job.counts, per_sku=ordered)


async def list_jobs(
    conn: AsyncConnection, user_id: str | None, *, limit: int, offset: int
) -> list[JobRecord]:
    query = select(*_LIGHT).order_by(ai_job.c.created_at.desc(), ai_job.c.id)
    if user_id is not None:
        query = query.where(ai_job.c.user_id == user_id)
    query = query.limit(limit).offset(offset)
    return [job_record(r) for r in (await conn.execute(query)).all()]


def _with_prompts() -> Any:
    """Image rows with their prompt's text as ``prompt``."""
    img, text = ai_job_image, ai_job_prompt
    joined = img.join(text, and_(text.c.job_pk == img.c.job_pk, text.c.idx == img.c.prompt_idx))
    return select(img, text.c.text.label("prompt")).select_from(joined)


async def images(conn: AsyncConnection, job_pk: str) -> list[ImageRecord]:
    """Every image of the job in payload order (tests, small jobs; the API pages)."""
    img = ai_job_image
    query = _with_prompts().where(img.c.job_pk == job_pk).order_by(img.c.position)
    return [image_record(r) for r in (await conn.execute(query)).all()]


async def prompts(conn: AsyncConnection, job_pks: Iterable[str]) -> dict[tuple[str, int], str]:
    """The prompts of these jobs by ``(job_pk, idx)``."""
    text = ai_job_prompt
    rows = await conn.execute(select(text).where(text.c.job_pk.in_(sorted(set(job_pks)))))
    return {(str(r.job_pk), int(r.idx)): str(r.text) for r in rows.all()}


async def image_page(
    conn: AsyncConnection, job: JobRecord, *, offset: int, limit: int
) -> Page[ImageRecord]:
    """Images ``offset`` .. ``offset + limit - 1`` by position: positions run 0 .. total - 1,
    so the page is a range of the unique ``(job_pk, position)`` index, O(limit) at any
    offset."""
    img = ai_job_image
    query = (
        _with_prompts()
        .where(img.c.job_pk == job.id, img.c.position >= offset, img.c.position < offset + limit)
        .order_by(img.c.position)
    )
    rows = (await conn.execute(query)).all()
    return Page([image_record(r) for r in rows], total=job.total, offset=offset, limit=limit)


async def result_keys(conn: AsyncConnection, job_pk: str) -> set[str]:
    """The storage keys of the job's recorded results."""
    img = ai_job_image
    query = select(img.c.result_key).where(img.c.job_pk == job_pk, img.c.result_key.is_not(None))
    return {str(key) for key in (await conn.scalars(query)).all()}


async def attempts(
    conn: AsyncConnection,
    job_pk: str,
    *,
    after: tuple[datetime, int] | None = None,
    limit: int | None = None,
) -> list[AttemptRecord]:
    """The job's attempts by start (then id); ``after`` a ``(started_at, id)`` keyset cursor."""
    a, i = ai_job_attempt, ai_job_image
    query = (
        select(a, i.c.position, i.c.sku, i.c.stem)
        .join(i, i.c.id == a.c.image_id)
        .where(a.c.job_pk == job_pk)
        .order_by(a.c.started_at, a.c.id)
    )
    if after is not None:
        started, last_id = after
        query = query.where(
            or_(a.c.started_at > started, and_(a.c.started_at == started, a.c.id > last_id))
        )
    if limit is not None:
        query = query.limit(limit)
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


URLS_EVERY_COMPLETION_MAX = 1000  # jobs up to this size rebuild their URLs on every change
URLS_REFRESH_SECONDS = 5.0  # bigger jobs: at most this often while running, and at the end


def urls_due(total: int, refreshed_at: datetime | None, now: datetime, *, ended: bool) -> bool:
    """Whether this roll-up rebuilds ``result_image_urls`` from the images (docs/design.md
    "Big jobs"): always for a small job and when the job ends; else every few seconds."""
    if ended or total <= URLS_EVERY_COMPLETION_MAX or refreshed_at is None:
        return True
    return (now - refreshed_at).total_seconds() >= URLS_REFRESH_SECONDS


async def rollup(
    conn: AsyncConnection,
    job_pk: str,
    now: datetime,
    moved: Mapping[str, int] | None = None,
    *,
    last_error: str | None = None,
    **changes: Any,
) -> str:
    """Roll the job up after a change to its images, in one UPDATE of its row.

    ``moved`` (status -> change) is what the caller's statements did to the job's images: it
    shifts the counts (``store.counts``) in the same UPDATE, and the status comes from the
    counts after it (``policy.rollup``). ``changes`` are other columns to set with it
    (``cancel_requested``, ``error``). The ordered result URLs are rebuilt when ``urls_due``.
    ``last_error`` is the error of the image that just failed: a job that ends ``failed``
    without a job-level error gets one from it (``policy.rollup.failed_job_error``).
    A job that ends has its sealed key erased. Returns the new status.

    One UPDATE, not one per concern: on SQLite every UPDATE of a row rewrites the whole row,
    and a big job's row carries its whole payload (``config``).
    """
    job = (await conn.execute(_rollup_row(job_pk))).one()
    moved = {status: delta for status, delta in (moved or {}).items() if delta}
    after = {
        status: int(job._mapping[column]) + moved.get(status, 0)
        for status, column in counts.COLUMNS.items()
    }
    status = rollup_status(
        after,
        cancel_requested=bool(changes.get("cancel_requested", job.cancel_requested)),
        started=job.status != JobStatus.QUEUED.value,
    )
    ended = status in TERMINAL_JOB_STATUSES
    summary = failed_job_error(status, after, last_error) if job.error is None else None
    values: dict[str, Any] = (
        ({"error": summary} if summary else {})
        | changes
        | {
            "status": status.value,
            "updated_at": now,
            "finished_at": now if ended else None,
        }
    )
    for image_status, delta in moved.items():
        column = counts.COLUMNS[image_status]
        values[column] = getattr(ai_job.c, column) + delta
    params: dict[str, Any] = {}
    if urls_due(job.total, job.urls_refreshed_at, now, ended=ended):
        # a parameter, not a value in the statement (see _INSERT_JOB): the list can be long
        params["urls"] = await _result_urls(conn, job_pk)
        values |= {"result_image_urls": _URLS, "urls_refreshed_at": now}
    await conn.execute(update(ai_job).where(ai_job.c.id == job_pk).values(**values), params)
    if ended:  # the key is erased when the job ends
        await conn.execute(ai_job_secret.delete().where(ai_job_secret.c.job_pk == job_pk))
    return status.value


_URLS = bindparam("urls", type_=ai_job.c.result_image_urls.type)


def _rollup_row(job_pk: str) -> Any:
    return select(
        *(getattr(ai_job.c, column) for column in counts.COLUMNS.values()),
        ai_job.c.cancel_requested,
        ai_job.c.status,
        ai_job.c.error,
        ai_job.c.total,
        ai_job.c.urls_refreshed_at,
    ).where(ai_job.c.id == job_pk)


async def _result_urls(conn: AsyncConnection, job_pk: str) -> list[str]:
    """The succeeded images' URLs in payload order (the ``(job_pk, status, position)`` index)."""
    img = ai_job_image
    query = (
        select(img.c.result_url)
        .where(img.c.job_pk == job_pk, img.c.status == ImageStatus.SUCCEEDED.value)
        .order_by(img.c.position)
    )
    return [str(url) for url in (await conn.scalars(query)).all()]
