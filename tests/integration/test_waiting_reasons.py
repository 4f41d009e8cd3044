"""``Store.waiting_reasons`` on SQLite and PostgreSQL: the words come from the claim's own
view, and what it calls ``next`` is what the next claim leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.governor import GovernorParams
from imagestudio.store.db import create_engine, migrate_async
from imagestudio.store.records import ImageRecord, JobRecord, Requeue, Succeeded
from imagestudio.store.store import Store
from testkit.payloads import batch_payload

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    if db_url.startswith("sqlite"):
        await migrate_async(db_url)
    built = create_engine(db_url)
    try:
        yield built
    finally:
        await built.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def submit(
    store: Store, clock: Clock, name: str, user: str, per_sku: tuple[int, ...], **options: Any
) -> JobRecord:
    raw = batch_payload("https://k1.example.com", name, images_per_sku=per_sku, options=options)
    spec = build_job_spec(parse_payload(raw), user_id=user, limits=IntakeLimits())
    job = (await store.submit(spec, b"sealed")).job
    clock.now += timedelta(seconds=1)
    return job


async def reasons(store: Store, job: JobRecord, limit: int = 4) -> dict[int, tuple[str, str]]:
    images: list[ImageRecord] = await store.images(job.id)
    found = await store.waiting_reasons(job, images, limit=limit)
    return {i.position: (found[i.id].kind, found[i.id].text) for i in images if i.id in found}


async def test_window_cap_serial_and_backoff(engine: AsyncEngine) -> None:
    clock = Clock()
    store = Store(engine, clock=clock, governor=GovernorParams(initial_window=2))
    serial = await submit(store, clock, "S", "alice", (2, 1), sku_serial=True, max_concurrency=1)
    other = await submit(store, clock, "B", "bob", (3,))
    before = await reasons(store, other)
    assert {kind for kind, _ in before.values()} <= {"next", "fair_share", "in_line"}
    claimed = await store.claim_batch("w", 4, 600)
    assert len(claimed.tasks) == 2  # the key's window is 2
    # Alice's job: its first image runs; the second waits for it (serial); SKU2 hits the cap.
    s = await reasons(store, serial)
    assert s[1] == ("sku_serial", "SKU serial: waiting for stem1")
    assert s[2] == ("job_cap", "per-job cap: 1/1 running")
    b = await reasons(store, other)
    assert b[1][0] == "window"
    assert "(2/2 in flight)" in b[1][1]
    # Bob's running image is snoozed by a 429: a retry time in words.
    bob = next(t for t in claimed.tasks if t.job_pk == other.id)
    until = clock.now + timedelta(seconds=30)
    await store.finish(bob, Requeue(until, "slow down", "RateLimited", 30, consumes_attempt=False))
    b = await reasons(store, other)
    assert b[bob.position] == ("rate_limited", "rate limited (429): retry at 12:00:32 UTC")
    alice = next(t for t in claimed.tasks if t.job_pk == serial.id)
    await store.finish(alice, Succeeded("k", "/files/k"))
    # Nothing runs now: what the reasons call ``next`` is exactly what a claim leases.
    nexts = {
        pos
        for job in (serial, other)
        for pos, (kind, _) in (await reasons(store, job)).items()
        if kind == "next"
    }
    leased = await store.claim_batch("w", 4, 600)
    assert {t.position for t in leased.tasks} == nexts
    assert nexts


async def test_no_reason_for_images_not_queued(engine: AsyncEngine) -> None:
    clock = Clock()
    store = Store(engine, clock=clock)
    job = await submit(store, clock, "A", "alice", (2,))
    await store.claim_batch("w", 1, 600)
    found = await reasons(store, job)
    assert list(found) == [1]  # position 0 is running
