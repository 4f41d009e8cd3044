"""The event outbox: ``ai_job_event`` read back by consumers, at least once, skipping nothing.

Writers append an event in the transaction of the change it reports (``append``: a claim
leases tasks, an attempt ends, a job is cancelled or retried), so an event exists exactly
when its change committed. Two kinds of consumer read them back:

- A **cursor consumer** (``EventOutbox.read`` and ``ack``; the webhook sender is one)
  keeps its position in the database, one ``event_cursor`` row per consumer name. ``read``
  returns the events after its last ack, across all jobs; the consumer delivers them, then
  acks the last one delivered. Delivery is **at least once**: a consumer that crashes, or fails
  to deliver, before ``ack`` reads the same events again, so a receiver must be idempotent on
  the event id. ``ack`` never moves a cursor backwards (a late ack from a slow duplicate is
  harmless), and consumers are independent of each other.
- The **SSE stream** (``events_after``) is a consumer whose cursor lives in the client: the
  ``Last-Event-ID`` it sends back when it reconnects.

Why not ``id > cursor``: ids come from a sequence, drawn when a row is inserted, not when its
transaction commits. On PostgreSQL, T1 inserts event 10, T2 inserts event 11 and commits, a
reader takes 11 and moves its cursor past it, then T1 commits event 10, which ``id > 11``
never returns: the consumer skips it. (SQLite cannot do this: a writer holds the database lock
from ``BEGIN IMMEDIATE`` to its commit, so ids are drawn in commit order; there ``tx`` is 0.)

The choice is the transaction-id approach. Each event row records its transaction's id
(``tx``, from ``pg_current_xact_id()``: 64 bits, never wraps), and a read returns events (1) in
``(tx, id)`` order, (2) only with ``tx`` below the ``xmin`` of the read's own snapshot, the
oldest transaction still running. Every transaction below ``xmin`` has ended, and a transaction
that writes later gets a higher id, so no event can appear behind a position a reader has
passed: nothing is skipped, and no clock or guessed delay is involved. The price is latency,
never loss: an event waits while an older transaction is open anywhere in the PostgreSQL
cluster (transaction ids are cluster-wide). Ours last milliseconds; a session left ``idle in
transaction`` holds delivery back until it ends. Rejected: reading only events older than a
few seconds (a guess that one slow commit defeats); tracking gaps in the ids (state per
consumer, and a timeout to give up on the gaps rolled-back transactions leave forever); a lock
around every event write (each finish would wait for the others' commits).

So the order is by transaction, not by commit: one transaction's events together, in insert
order, transactions in the order PostgreSQL gave them ids. For one job that is commit order
among finish, cancel and retry: each locks the job row before it writes, so its id follows
its lock. A claim gets its id at its first write; when it rescued an expired lease that is
before it read the queue, so in that claim an image's ``running`` event can be read before the
``queued`` (retry) event of the attempt that ended just before. Events carry ``attempt``: a
consumer keeping the latest state of an image compares it.

An SSE client sends back an event id; ``events_after`` finds that event's ``(tx, id)`` and
returns the job's events after it. SSE ids are therefore positions, not always increasing on
PostgreSQL; an id the log does not hold counts as the position ``(0, id)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Text, cast, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagestudio.store.records import EventRecord
from imagestudio.store.rows import event_record
from imagestudio.store.tables import ai_job_event, event_cursor

NewEvent = tuple[str, str, dict[str, Any]]  # (job pk, type, data)
_ev = ai_job_event


def utcnow() -> datetime:
    return datetime.now(UTC)


def _bigint(xid8: Any) -> Any:
    return cast(cast(xid8, Text), BigInteger)


_THIS_TX = _bigint(func.pg_current_xact_id())
_XMIN = _bigint(func.pg_snapshot_xmin(func.pg_current_snapshot()))


async def append(conn: AsyncConnection, now: datetime, events: Sequence[NewEvent]) -> None:
    """Append events in the caller's transaction: they commit, or vanish, with its change."""
    if not events:
        return
    stmt = _ev.insert()
    if conn.dialect.name == "postgresql":
        stmt = stmt.values(tx=_THIS_TX)
    rows = [
        {"job_pk": pk, "type": kind, "data": data, "created_at": now} for pk, kind, data in events
    ]
    await conn.execute(stmt, rows)


def _visible_after(conn: AsyncConnection, tx: Any, event_id: Any) -> Any:
    """Events past the position ``(tx, event_id)`` that no open transaction can precede."""
    query = select(_ev).where(tuple_(_ev.c.tx, _ev.c.id) > tuple_(tx, event_id))
    if conn.dialect.name == "postgresql":
        query = query.where(_ev.c.tx < _XMIN)
    return query.order_by(_ev.c.tx, _ev.c.id)


def _tx_of(event_id: int) -> Any:
    """The ``tx`` of event ``event_id``, 0 if the log does not hold it."""
    found = select(_ev.c.tx).where(_ev.c.id == event_id).scalar_subquery()
    return func.coalesce(found, 0)


async def events_after(
    conn: AsyncConnection, job_pk: str, after: int, limit: int = 500
) -> list[EventRecord]:
    """The job's events past event ``after`` (0: from the start), in outbox order."""
    query = _visible_after(conn, _tx_of(after), after).where(_ev.c.job_pk == job_pk)
    return [event_record(r) for r in (await conn.execute(query.limit(limit))).all()]


async def has_events_after(conn: AsyncConnection, job_pk: str, after: int) -> bool:
    """Whether the job has committed events past ``after``, readable now or held back."""
    position = tuple_(_ev.c.tx, _ev.c.id) > tuple_(_tx_of(after), after)
    found = await conn.scalar(select(_ev.c.id).where(_ev.c.job_pk == job_pk, position).limit(1))
    return found is not None


class EventOutbox:
    """Reads of the event log: per consumer with a cursor in the database, and per job."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        reader: AsyncEngine | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.reader = reader or engine
        self.clock = clock

    async def read(self, consumer: str, limit: int = 100) -> list[EventRecord]:
        """Up to ``limit`` events after ``consumer``'s last ack, across all jobs, in order.

        Reading moves nothing: until ``ack``, every read returns the same events (and more).
        """
        async with self.reader.connect() as conn:
            found = await conn.execute(
                select(event_cursor.c.last_tx, event_cursor.c.last_event_id).where(
                    event_cursor.c.consumer == consumer
                )
            )
            tx, event_id = found.first() or (0, 0)
            query = _visible_after(conn, tx, event_id).limit(limit)
            return [event_record(r) for r in (await conn.execute(query)).all()]

    async def ack(self, consumer: str, last_id: int) -> None:
        """``consumer`` has delivered every event up to ``last_id`` (one that ``read`` returned).

        The cursor only moves forward: an ack of an event at or before it changes nothing.
        Raises ``LookupError`` for an id the log does not hold.
        """
        cur = event_cursor
        async with self.engine.begin() as conn:
            tx = await conn.scalar(select(_ev.c.tx).where(_ev.c.id == last_id))
            if tx is None:
                raise LookupError(f"no event {last_id} to ack")
            dialect_insert = (
                postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            )
            stmt = dialect_insert(cur).values(
                consumer=consumer, last_tx=tx, last_event_id=last_id, updated_at=self.clock()
            )
            new = stmt.excluded
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["consumer"],
                    set_={
                        "last_tx": new.last_tx,
                        "last_event_id": new.last_event_id,
                        "updated_at": new.updated_at,
                    },
                    where=tuple_(cur.c.last_tx, cur.c.last_event_id)
                    < tuple_(new.last_tx, new.last_event_id),
                )
            )

    async def cursor(self, consumer: str) -> int:
        """The id of the last event ``consumer`` acked; 0 before its first ack."""
        async with self.reader.connect() as conn:
            found = await conn.scalar(
                select(event_cursor.c.last_event_id).where(event_cursor.c.consumer == consumer)
            )
        return int(found or 0)

    async def events_after(self, job_pk: str, after: int, limit: int = 500) -> list[EventRecord]:
        """The job's events past event ``after``: the SSE stream, whose cursor is the client's."""
        async with self.reader.connect() as conn:
            return await events_after(conn, job_pk, after, limit)

    async def has_events_after(self, job_pk: str, after: int) -> bool:
        """Whether the job has committed events past ``after`` that are not read yet (held back
        behind an older open transaction): a stream must not end before they are sent."""
        async with self.reader.connect() as conn:
            return await has_events_after(conn, job_pk, after)
