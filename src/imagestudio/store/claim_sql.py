"""The claim's reads: SQL only, no I/O. Each is bounded by the active jobs, the running tasks
or the heads asked for, never by the number of queued tasks (rendered in docs/claim-sql.md).

- ``active_jobs``: the unfinished jobs (``status`` queued or running, index ``(status,
  created_at)``), with what fairness needs of them and their ``last_started_at``;
- ``running_tasks``: every running task with its job's user and key and whether its provider
  call is on (index ``(status, run_after)``; as many rows as the windows let run);
- ``heads_lateral`` (PostgreSQL) and ``heads_union`` (SQLite): per job, its first ``n`` due
  queued tasks by position (index ``(job_pk, status, position)``), each asked-for job with
  its own ``n`` (``policy.fairness.head_limits``);
- ``key_counts``, ``running_of_jobs``: the same counts again for a few keys and jobs, read
  under the keys' governor locks (``store.queue``);
- ``next_due``: the earliest ``run_after`` still to come (index ``(status, run_after)``).

*Heads of a ``sku_serial`` job*: a task is one only if no earlier image of its SKU is queued
or running. Intake lays a job's images out SKU by SKU (``sku_index`` is the index within the
SKU), so the earlier images of the SKU are positions ``[position - sku_index, position)``:
one probe of the ``(job_pk, status, position)`` index per task looked at. The walk still
steps over the tasks of a SKU whose earlier image is busy, so a serial job costs
O(heads x images per SKU) at worst, and any job O(heads + its not-yet-due queued tasks
before them).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    Integer,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    union_all,
)

from imagestudio.domain import ImageStatus, JobStatus
from imagestudio.store.tables import ai_job, ai_job_image

QUEUED, RUNNING = ImageStatus.QUEUED.value, ImageStatus.RUNNING.value
UNFINISHED = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
UNION_ARMS = (1, 4, 16, 64)  # SQLite: statements cached by arm count; unused arms ask for 0


@functools.cache
def active_jobs() -> Any:
    job = ai_job
    return select(
        job.c.id,
        job.c.user_id,
        job.c.created_at,
        job.c.provider_key,
        job.c.max_concurrency,
        job.c.sku_serial,
        job.c.cancel_requested,
        job.c.last_started_at,
    ).where(job.c.status.in_(UNFINISHED))


@functools.cache
def running_tasks() -> Any:
    img, job = ai_job_image, ai_job
    return (
        select(
            img.c.job_pk,
            job.c.user_id,
            job.c.provider_key,
            img.c.call_ended_at.is_(None).label("in_call"),
        )
        .select_from(img.join(job, job.c.id == img.c.job_pk))
        .where(img.c.status == RUNNING)
    )


def _sku_free(img: Any, serial: Any) -> Any:
    """Not serial, or no earlier image of the task's SKU queued or running."""
    earlier = ai_job_image.alias("earlier")
    busy = exists().where(
        earlier.c.job_pk == img.c.job_pk,
        earlier.c.status.in_([QUEUED, RUNNING]),
        earlier.c.position >= img.c.position - img.c.sku_index,
        earlier.c.position < img.c.position,
        earlier.c.sku == img.c.sku,
    )
    return or_(not_(serial), not_(busy))


def _due(img: Any, *, sqlite: bool = False) -> Any:
    due = img.c.run_after <= bindparam("now", type_=img.c.run_after.type)
    # SQLite: ``likely`` tells its planner most queued tasks are due, so it walks the heads
    # index instead of taking (status, run_after) and sorting every queued task by position.
    return and_(img.c.status == QUEUED, func.likely(due) if sqlite else due)


@functools.cache
def heads_lateral() -> Any:
    """PostgreSQL: every asked-for job's heads in one statement (a LATERAL join over arrays
    ``:job_pks``, ``:ns``, ``:serials``)."""
    want = (
        func.unnest(
            bindparam("job_pks", type_=ARRAY(String)),
            bindparam("ns", type_=ARRAY(Integer)),
            bindparam("serials", type_=ARRAY(Boolean)),
        )
        .table_valued("job_pk", "n", "serial")
        .render_derived(name="want")
    )
    img = ai_job_image
    heads = (
        select(img.c.id, img.c.position)
        .where(img.c.job_pk == want.c.job_pk, _due(img), _sku_free(img, want.c.serial))
        .order_by(img.c.position)
        .limit(want.c.n)
        .lateral("heads")
    )
    return select(want.c.job_pk, heads.c.id, heads.c.position).select_from(
        want.join(heads, literal(True))
    )


@functools.cache
def heads_union(arms: int) -> Any:
    """SQLite: ``arms`` jobs' heads in one statement (``:job_pk_i``, ``:n_i``, ``:serial_i``),
    each arm walking ``(job_pk, status, position)`` (see ``_due``)."""
    parts = []
    for i in range(arms):
        img = ai_job_image.alias(f"img_{i}")
        job_pk = bindparam(f"job_pk_{i}", type_=String)
        arm = (
            select(img.c.job_pk, img.c.id, img.c.position)
            .where(
                img.c.job_pk == job_pk,
                _due(img, sqlite=True),
                _sku_free(img, bindparam(f"serial_{i}", type_=Boolean)),
            )
            .order_by(img.c.position)
            .limit(bindparam(f"n_{i}", type_=Integer))
            .subquery(f"arm_{i}")
        )
        parts.append(select(arm))
    return union_all(*parts)


def union_params(wants: list[tuple[str, int, bool]], arms: int) -> dict[str, Any]:
    padded = wants + [("", 0, False)] * (arms - len(wants))
    params: dict[str, Any] = {}
    for i, (job_pk, n, serial) in enumerate(padded):
        params |= {f"job_pk_{i}": job_pk, f"n_{i}": n, f"serial_{i}": serial}
    return params


@functools.cache
def key_counts() -> Any:
    """Per key of ``:keys``: its running tasks, and those whose provider call has not ended
    (each holds a slot of the key's window)."""
    img, job = ai_job_image, ai_job
    in_call = func.sum(case((img.c.call_ended_at.is_(None), 1), else_=0))
    return (
        select(job.c.provider_key, func.count().label("n"), in_call.label("in_call"))
        .select_from(img.join(job, job.c.id == img.c.job_pk))
        .where(img.c.status == RUNNING, job.c.provider_key.in_(bindparam("keys", expanding=True)))
        .group_by(job.c.provider_key)
    )


@functools.cache
def running_of_jobs() -> Any:
    """Per job of ``:job_pks``, its running tasks."""
    img = ai_job_image
    return (
        select(img.c.job_pk, func.count())
        .where(img.c.status == RUNNING, img.c.job_pk.in_(bindparam("job_pks", expanding=True)))
        .group_by(img.c.job_pk)
    )


@functools.cache
def next_due() -> Any:
    img = ai_job_image
    later = img.c.run_after > bindparam("now", type_=img.c.run_after.type)
    return select(func.min(img.c.run_after)).where(img.c.status == QUEUED, later)
