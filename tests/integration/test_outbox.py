"""The event outbox on real SQLite and real PostgreSQL: cursors kept in the database, at-least-once
reads, independent consumers, the per-job read behind SSE, and (PostgreSQL) an event whose
transaction commits after a later one was read is held back, never skipped.

On PostgreSQL a read returns only events below the oldest open transaction of the whole
cluster, and other sessions may be running tests on it: ``eventually`` waits (at most 10 s) for
what the test committed to become readable instead of assuming it already is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.governor import GovernorParams
from imagestudio.store import outbox
from imagestudio.store.db import create_engine
from imagestudio.store.outbox import EventOutbox
from imagestudio.store.records import EventRecord, Succeeded
from imagestudio.store.store import Store
from imagestudio.store.tables import ai_job_event
from testkit.payloads import batch_payload

SEALED = b"sealed-key-bytes"
LEASE = 30.0
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
postgres_only = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
async def store(migrated: str) -> AsyncIterator[Store]:
    built = Store(create_engine(migrated), governor=GovernorParams(initial_window=64))
    try:
        yield built
    finally:
        await built.close()


async def submit(store: Store, job_id: str) -> str:
    raw = batch_payload("https://cdn.example.com", job_id)
    spec = build_job_spec(parse_payload(raw), user_id="user-123", limits=IntakeLimits())
    return (await store.submit(spec, SEALED)).job.id


async def some_events(store: Store) -> tuple[str, str]:
    """Two jobs and five events: three claims (``running``), a finish, a cancel."""
    first = await submit(store, "first")
    tasks = await store.claim("w1", 3, LEASE)
    assert len(tasks) == 3
    await store.finish(tasks[0], Succeeded(result_key="k/0.png", result_url="/files/k/0.png"))
    second = await submit(store, "second")
    await store.cancel(second)
    return first, second


async def eventually(
    read: Callable[[], Awaitable[list[EventRecord]]], count: int
) -> list[EventRecord]:
    """``read()`` once it returns ``count`` events (or what it returns after 10 s)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        events = await read()
        if len(events) >= count or asyncio.get_running_loop().time() > deadline:
            return events
        await asyncio.sleep(0.02)


async def read_until(box: EventOutbox, consumer: str, count: int) -> list[EventRecord]:
    return await eventually(lambda: box.read(consumer), count)


async def test_read_returns_every_jobs_events_in_order(store: Store) -> None:
    first, second = await some_events(store)
    events = await read_until(store.outbox, "webhooks", 5)
    assert [(e.job_pk, e.type, e.data["status"]) for e in events] == [
        (first, "image", "running"),
        (first, "image", "running"),
        (first, "image", "running"),
        (first, "image", "succeeded"),
        (second, "job", "cancelled"),
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids)  # one writer at a time: transaction order is id order
    assert await store.outbox.read("webhooks", limit=2) == events[:2]


async def test_the_cursor_survives_a_new_store(store: Store, migrated: str) -> None:
    await some_events(store)
    events = await read_until(store.outbox, "webhooks", 5)
    await store.outbox.ack("webhooks", events[2].id)

    again = Store(create_engine(migrated))
    try:
        assert await again.outbox.cursor("webhooks") == events[2].id
        assert await again.outbox.read("webhooks") == events[3:]
        await again.outbox.ack("webhooks", events[-1].id)
        assert await again.outbox.read("webhooks") == []
        await again.cancel(events[0].job_pk)  # a new event, after the cursor
        (cancelled,) = await read_until(again.outbox, "webhooks", 1)
        assert (cancelled.type, cancelled.data["action"]) == ("job", "cancel")
    finally:
        await again.close()


async def test_unacked_events_are_read_again(store: Store) -> None:
    """At least once: a consumer that dies before its ack gets the same events again."""
    await some_events(store)
    events = await read_until(store.outbox, "webhooks", 5)
    assert await store.outbox.read("webhooks") == events  # reading moved nothing
    await store.outbox.ack("webhooks", events[1].id)
    assert await store.outbox.read("webhooks") == events[2:]
    assert await store.outbox.read("webhooks") == events[2:]


async def test_an_ack_never_moves_the_cursor_back(store: Store) -> None:
    await some_events(store)
    events = await read_until(store.outbox, "webhooks", 5)
    await store.outbox.ack("webhooks", events[3].id)
    await store.outbox.ack("webhooks", events[0].id)  # a slow duplicate acking late
    await store.outbox.ack("webhooks", events[3].id)
    assert await store.outbox.cursor("webhooks") == events[3].id
    assert await store.outbox.read("webhooks") == events[4:]


async def test_consumers_are_independent(store: Store) -> None:
    await some_events(store)
    events = await read_until(store.outbox, "webhooks", 5)
    await store.outbox.ack("webhooks", events[-1].id)
    assert await store.outbox.read("webhooks") == []
    assert await store.outbox.cursor("audit") == 0
    assert await store.outbox.read("audit") == events


async def test_ack_of_an_event_the_log_does_not_hold_raises(store: Store) -> None:
    with pytest.raises(LookupError, match="no event 12345"):
        await store.outbox.ack("webhooks", 12345)
    assert await store.outbox.cursor("webhooks") == 0


async def test_events_after_reads_one_job_from_the_clients_position(store: Store) -> None:
    first, second = await some_events(store)
    box = store.outbox
    mine = await eventually(lambda: box.events_after(first, 0), 4)
    assert [e.data["status"] for e in mine] == ["running", "running", "running", "succeeded"]
    assert {e.job_pk for e in mine} == {first}
    assert await box.events_after(first, mine[1].id) == mine[2:]
    assert await box.events_after(first, mine[-1].id) == []
    assert not await box.has_events_after(first, mine[-1].id)
    assert await box.has_events_after(first, mine[1].id)
    assert [e.type for e in await eventually(lambda: box.events_after(second, 0), 1)] == ["job"]
    assert await store.events_after(first, mine[1].id) == mine[2:]  # the facade reads the same


# -- PostgreSQL: transactions that commit out of id order ----------------------------------------


async def append(conn: AsyncConnection, job_pk: str, n: int) -> int:
    await outbox.append(conn, NOW, [(job_pk, "image", {"n": n})])
    query = select(ai_job_event.c.id).where(ai_job_event.c.data["n"].as_integer() == n)
    return int(await conn.scalar(query) or 0)


@postgres_only
async def test_an_event_committed_late_is_held_back_not_skipped(store: Store) -> None:
    """T1 inserts event a, T2 inserts b > a and commits first: an ``id > cursor`` reader would
    take b, move past a, and never see a. The outbox holds b back until T1 has ended."""
    job = await submit(store, "late")
    box = store.outbox
    async with store.engine.connect() as t1:
        await t1.begin()
        a = await append(t1, job, 1)
        async with store.engine.begin() as t2:
            b = await append(t2, job, 2)
        assert a < b
        async with store.engine.connect() as naive:
            seen = await naive.scalars(select(ai_job_event.c.id).where(ai_job_event.c.id >= a))
            assert list(seen) == [b]  # the hazard: a is not there yet, b is
        assert await box.read("webhooks") == []
        assert await box.events_after(job, 0) == []
        assert await box.has_events_after(job, 0)  # so SSE does not end the stream yet
        await t1.commit()
    events = await read_until(box, "webhooks", 2)
    assert [e.id for e in events] == [a, b]
    assert [e.id for e in await eventually(lambda: box.events_after(job, 0), 2)] == [a, b]
    await box.ack("webhooks", b)
    assert await box.read("webhooks") == []


@postgres_only
async def test_the_order_is_by_transaction_not_by_id(store: Store) -> None:
    """T1 takes its transaction id first, T2 inserts a and commits, then T1 inserts b > a:
    b comes first, and a reader that took b before T2's a was readable skips nothing."""
    job = await submit(store, "order")
    async with store.engine.connect() as t1:
        await t1.begin()
        await t1.execute(text("SELECT pg_current_xact_id()"))
        async with store.engine.begin() as t2:
            a = await append(t2, job, 1)
        assert await store.outbox.events_after(job, 0) == []  # T1 is older and still open
        b = await append(t1, job, 2)
        await t1.commit()
    events = await eventually(lambda: store.outbox.events_after(job, 0), 2)
    assert a < b
    assert [e.id for e in events] == [b, a]
    assert await store.outbox.events_after(job, b) == events[1:]  # b's position, not its id
    assert await store.outbox.events_after(job, a) == []
