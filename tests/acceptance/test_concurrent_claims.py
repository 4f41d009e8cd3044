"""Claims from many connections at once on PostgreSQL, with no cluster-wide lock.

Six stores, each with its own engine (their own connections, real transactions), claim,
end calls and finish concurrently against two provider keys while a seventh connection keeps
sampling the committed state: no key's window and no job's cap is ever exceeded, no task is
leased twice, and everything finishes. A transaction holding one key's governor row does not
hold back a claim for another key; a claim with only that key's tasks waits for it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagestudio.domain import ImageStatus
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.governor import GovernorParams
from imagestudio.store.db import create_engine
from imagestudio.store.records import JobRecord, Succeeded
from imagestudio.store.store import Store, utcnow
from imagestudio.store.tables import ai_job, ai_job_image, provider_governor
from testkit.payloads import batch_payload

pytestmark = pytest.mark.postgres

WINDOWS = {"ka": 3.0, "kb": 2.0}
CLAIMERS = 6


def api_base(key: str) -> str:
    return f"https://{key}.example.com"


def make_store(url: str) -> Store:
    pins = {f"{api_base(k)}/v1": (w, None) for k, w in WINDOWS.items()}
    return Store(create_engine(url), governor=GovernorParams(initial_window=8), pins=pins)


async def submit(
    store: Store, name: str, user: str, key: str, images: int, cap: int | None = None
) -> JobRecord:
    options = {"max_concurrency": cap}
    raw = batch_payload(api_base(key), name, images_per_sku=(images,), options=options)
    spec = build_job_spec(parse_payload(raw), user_id=user, limits=IntakeLimits())
    return (await store.submit(spec, b"sealed")).job


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[list[Store]]:
    built = [make_store(pg_url) for _ in range(CLAIMERS)]
    try:
        yield built
    finally:
        for store in built:
            await store.close()


@pytest.fixture
async def probe(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    try:
        yield engine
    finally:
        await engine.dispose()


class Sampler:
    """The most calls in flight per key and running tasks per job, in committed states."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.in_call: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.samples = 0

    async def sample(self) -> None:
        img, job = ai_job_image, ai_job
        running = img.c.status == ImageStatus.RUNNING.value
        per_key = (
            select(job.c.provider_key, func.count())
            .select_from(img.join(job, job.c.id == img.c.job_pk))
            .where(running, img.c.call_ended_at.is_(None))
            .group_by(job.c.provider_key)
        )
        per_job = select(img.c.job_pk, func.count()).where(running).group_by(img.c.job_pk)
        async with self.engine.connect() as conn:
            for counts, query in ((self.in_call, per_key), (self.running, per_job)):
                for name, n in (await conn.execute(query)).all():
                    counts[name] = max(counts[name], int(n))
        self.samples += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()


async def claimer(
    store: Store, name: str, rng: random.Random, leased: list[int], stop: asyncio.Event
) -> None:
    """Claim, hold each task's call for a few turns of the loop, end it, finish it."""
    while not stop.is_set():
        got = await store.claim_batch(name, rng.randint(1, 3), 600.0)
        leased.extend(t.image_id for t in got.tasks)
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)  # a turn of the loop: the others claim meanwhile
        for task in got.tasks:
            await store.end_call(task, utcnow().timestamp(), None)
            await store.finish(task, Succeeded(f"r/{task.image_id}", f"/files/{task.image_id}"))
        if not got.tasks:
            await asyncio.sleep(0)


async def test_windows_and_caps_hold_and_nothing_is_leased_twice(
    stores: list[Store], probe: AsyncEngine
) -> None:
    jobs = [
        await submit(stores[0], "A", "alice", "ka", 30),
        await submit(stores[0], "B", "bob", "ka", 30, cap=2),
        await submit(stores[0], "C", "carol", "kb", 30),
        await submit(stores[0], "D", "alice", "kb", 30),
    ]
    total = sum(j.total for j in jobs)
    sampler, stop, leased = Sampler(probe), asyncio.Event(), list[int]()

    async def until_done() -> None:
        while await stores[0].queue_depth() or await stores[0].has_pending():
            await sampler.sample()
        stop.set()

    work = [
        claimer(store, f"w{n}", random.Random(n), leased, stop) for n, store in enumerate(stores)
    ]
    await asyncio.wait_for(asyncio.gather(until_done(), sampler.run(stop), *work), timeout=90)

    keys = {j.provider_key: j.id for j in jobs}
    assert sampler.samples > 20
    for job in jobs:
        key_name = "ka" if job.id in (jobs[0].id, jobs[1].id) else "kb"
        assert sampler.in_call[job.provider_key] <= WINDOWS[key_name], (key_name, sampler.in_call)
    assert sampler.running[jobs[1].id] <= 2, sampler.running
    assert len(keys) == 2
    assert max(sampler.in_call.values()) >= 2  # the claims did overlap
    assert sorted(leased) == sorted(set(leased)), "a task was leased twice"
    assert len(leased) == total
    for job in jobs:
        images = await stores[0].images(job.id)
        assert {i.status for i in images} == {ImageStatus.SUCCEEDED}
        assert all(i.attempts == 1 for i in images)


async def _waiting_on_a_lock(probe: AsyncEngine) -> bool:
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with probe.connect() as conn:
        return bool(await conn.scalar(query))


async def test_a_claimer_holding_one_key_does_not_hold_back_another_key(
    stores: list[Store], probe: AsyncEngine
) -> None:
    store = stores[0]
    a = await submit(store, "A", "alice", "ka", 3)
    b = await submit(store, "B", "bob", "kb", 3)
    async with probe.connect() as holder:
        await holder.begin()
        gov = provider_governor
        await holder.execute(select(gov.c.key).where(gov.c.key == a.provider_key).with_for_update())
        # A's tasks are candidates too, but A's row is held: this claim takes B's and goes
        got = await asyncio.wait_for(store.claim_batch("w", 10, 600.0), timeout=10)
        assert [t.job_pk for t in got.tasks] == [b.id, b.id]  # kb's window is 2
        # now only A's tasks fit: the claim waits for A's row, on a lock
        pending = asyncio.ensure_future(stores[1].claim_batch("w2", 10, 600.0))
        for _ in range(500):
            if await _waiting_on_a_lock(probe):
                break
            await asyncio.sleep(0.01)
        assert not pending.done()
        assert await _waiting_on_a_lock(probe)
        await holder.rollback()
    got = await asyncio.wait_for(pending, timeout=10)
    assert [t.job_pk for t in got.tasks] == [a.id] * 3
