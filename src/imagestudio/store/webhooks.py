"""Webhook deliveries: made from the event outbox, claimed with a lease, each try recorded.

``enqueue`` turns a batch of outbox events (read by the ``webhooks`` cursor consumer) into
``webhook_delivery`` rows for the jobs that have an endpoint (``ai_job_webhook``), one per
message (``policy.webhooks.message_type``). The unique ``(event_id, type)`` with ``ON CONFLICT
DO NOTHING`` makes a batch read twice (a sender that crashed before its ack, two senders at
once) insert each message once: the outbox is at least once, the deliveries exactly once.

``claim`` leases due messages (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's writers are
serialized) and counts the try at once, so a sender killed mid-try has it counted and its
message comes back when the lease ends. ``record`` writes a try's result only while that
lease is the message's (the lease's end is its fence), so a late sender writes nothing.

Functions take a connection; the ``Store`` facade chooses the engine and the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.policy.webhooks import message_id, message_type
from imagestudio.store import jobs
from imagestudio.store.records import EventRecord, JobRecord, SealedWebhook
from imagestudio.store.tables import ai_job, ai_job_webhook, webhook_delivery

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
URLS_IN_MESSAGE_MAX = 100  # a job.* message lists result URLs up to this many images
_wd = webhook_delivery


@dataclass(frozen=True, slots=True)
class Delivery:
    """One leased try of a message: what to send, where (sealed) and the lease's end."""

    id: int
    job_pk: str
    msg_id: str
    type: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    lease_until: datetime
    endpoint: SealedWebhook | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    msg_id: str
    type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


async def endpoints(conn: AsyncConnection, job_pks: Sequence[str]) -> dict[str, SealedWebhook]:
    w = ai_job_webhook
    rows = (await conn.execute(select(w).where(w.c.job_pk.in_(list(job_pks))))).all()
    return {
        r.job_pk: SealedWebhook(
            url_enc=bytes(r.url_enc),
            secret_enc=bytes(r.secret_enc) if r.secret_enc is not None else None,
            image_events=bool(r.image_events),
        )
        for r in rows
    }


async def enqueue(conn: AsyncConnection, events: Sequence[EventRecord], now: datetime) -> int:
    """Make the messages of ``events`` for jobs with an endpoint; returns how many are new."""
    hooked = await endpoints(conn, sorted({e.job_pk for e in events}))
    made: list[tuple[EventRecord, str]] = [
        (event, kind)
        for event in events
        if event.job_pk in hooked
        for kind in message_type(
            event.type, event.data, image_events=hooked[event.job_pk].image_events
        )
    ]
    if not made:
        return 0
    records = await jobs.jobs_by_pk(conn, sorted({e.job_pk for e, _ in made}))
    rows = []
    for event, kind in made:
        job = records[event.job_pk]
        payload = {
            "type": kind,
            "timestamp": event.created_at.isoformat(),
            "data": await _data(conn, kind, event, job),
        }
        rows.append(
            {
                "job_pk": event.job_pk,
                "event_id": event.id,
                "msg_id": message_id(event.id, kind),
                "type": kind,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(_wd).on_conflict_do_nothing(index_elements=["event_id", "type"])
    result = await conn.execute(stmt.returning(_wd.c.id), rows)
    return len(result.all())


async def _data(
    conn: AsyncConnection, kind: str, event: EventRecord, job: JobRecord
) -> dict[str, Any]:
    """The message's ``data``: the job as it ended, or the image's end."""
    data: dict[str, Any] = {"job_id": job.job_id, "user_id": job.user_id}
    if kind.startswith("image."):
        keys = ("position", "sku", "stem", "attempt", "status", "result_url", "error")
        return data | {k: event.data[k] for k in keys if k in event.data}
    data |= {
        "status": kind.removeprefix("job."),
        "total": job.total,
        "counts": job.counts,
        "error": job.error,
        "usage": {
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "estimated_cost_usd": round(job.cost, 6),
            "max_cost": job.max_cost,
        },
    }
    if job.total <= URLS_IN_MESSAGE_MAX:
        urls = await conn.scalar(select(ai_job.c.result_image_urls).where(ai_job.c.id == job.id))
        data["result_image_urls"] = list(urls or [])
    return data


def _due(now: datetime) -> Any:
    return select(_wd.c.id).where(
        _wd.c.status == PENDING,
        _wd.c.next_attempt_at <= now,
        or_(_wd.c.lease_until.is_(None), _wd.c.lease_until <= now),
    )


async def any_due(conn: AsyncConnection, now: datetime) -> bool:
    """Whether a message is due (a read, so an idle sender takes no write lock on SQLite)."""
    return await conn.scalar(_due(now).limit(1)) is not None


async def any_hooked(conn: AsyncConnection, job_pks: Sequence[str]) -> bool:
    w = ai_job_webhook
    found = await conn.scalar(select(w.c.job_pk).where(w.c.job_pk.in_(list(job_pks))).limit(1))
    return found is not None


async def claim(
    conn: AsyncConnection, now: datetime, lease_until: datetime, limit: int
) -> list[Delivery]:
    """Lease up to ``limit`` due messages, counting their try now."""
    due = _due(now).order_by(_wd.c.next_attempt_at, _wd.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list((await conn.scalars(due)).all())
    if not ids:
        return []
    rows = (
        await conn.execute(
            update(_wd)
            .where(_wd.c.id.in_(ids))
            .values(lease_until=lease_until, attempts=_wd.c.attempts + 1)
            .returning(_wd)
        )
    ).all()
    hooked = await endpoints(conn, sorted({r.job_pk for r in rows}))
    return [
        Delivery(
            id=r.id,
            job_pk=r.job_pk,
            msg_id=r.msg_id,
            type=r.type,
            payload=r.payload,
            attempts=r.attempts,
            created_at=r.created_at,
            lease_until=r.lease_until,
            endpoint=hooked.get(r.job_pk),
        )
        for r in sorted(rows, key=lambda r: r.id)
    ]


async def record(
    conn: AsyncConnection,
    delivery: Delivery,
    *,
    now: datetime,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
) -> bool:
    """A try's result, if ``delivery``'s lease is still the message's: delivered (no
    ``error``), tried again at ``next_attempt_at``, or given up (``error`` and no next)."""
    values: dict[str, Any] = {
        "lease_until": None,
        "last_status_code": status_code,
        "last_error": error,
    }
    if error is None:
        values |= {"status": DELIVERED, "delivered_at": now}
    elif next_attempt_at is None:
        values["status"] = FAILED
    else:
        values["next_attempt_at"] = next_attempt_at
    result = await conn.execute(
        update(_wd)
        .where(_wd.c.id == delivery.id, _wd.c.lease_until == delivery.lease_until)
        .values(**values)
    )
    return result.rowcount == 1


async def of_job(conn: AsyncConnection, job_pk: str, limit: int = 50) -> list[DeliveryRecord]:
    """The job's latest messages, oldest first."""
    query = select(_wd).where(_wd.c.job_pk == job_pk).order_by(_wd.c.id.desc()).limit(limit)
    rows = (await conn.execute(query)).all()
    return [
        DeliveryRecord(
            msg_id=r.msg_id,
            type=r.type,
            status=r.status,
            attempts=r.attempts,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            next_attempt_at=r.next_attempt_at if r.status == PENDING else None,
            created_at=r.created_at,
            delivered_at=r.delivered_at,
        )
        for r in reversed(rows)
    ]
