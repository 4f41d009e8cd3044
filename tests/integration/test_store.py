"""The store on real SQLite and real PostgreSQL: submit, claim, leases, fencing, roll-up."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from imagestudio.domain import JobSpec
from imagestudio.errors import JobConflict, LeaseLost
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.governor import GovernorParams
from imagestudio.store.db import create_engine
from imagestudio.store.records import Failed, Requeue, Succeeded
from imagestudio.store.store import Store
from imagestudio.store.tables import ai_job, ai_job_image, provider_governor
from testkit.payloads import batch_payload

CDN = "https://cdn.example.com"
SEALED = b"sealed-key-bytes"
LEASE = 30.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(migrated: str, clock: Clock) -> AsyncIterator[Store]:
    # A wide provider window: these tests are about leases and fencing, not the governor.
    built = Store(create_engine(migrated), clock=clock, governor=GovernorParams(initial_window=64))
    try:
        yield built
    finally:
        await built.close()


def make_spec(job_id: str | None = "job-1", *, user: str = "user-123", **options: Any) -> JobSpec:
    raw = batch_payload(CDN, job_id, options=options)
    return build_job_spec(parse_payload(raw), user_id=user, limits=IntakeLimits())


def done(position: int) -> Succeeded:
    return Succeeded(result_key=f"job/{position:04d}.png", result_url=f"/files/{position:04d}.png")


async def held(store: Store, worker: str, ids: list[int], lease: float) -> set[int]:
    """The image ids whose attempts ``worker`` still holds after a heartbeat."""
    return {image_id for image_id, _ in await store.heartbeat(worker, ids, lease)}


async def count(store: Store, table: Any) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def test_submit_writes_the_job_and_its_images(store: Store, clock: Clock) -> None:
    spec = make_spec()
    result = await store.submit(spec, SEALED)
    assert result.created
    job = result.job
    assert (job.job_id, job.user_id, job.status, job.total) == ("job-1", "user-123", "queued", 5)
    assert job.payload_hash == spec.payload_hash
    async with store.engine.connect() as conn:
        config = await conn.scalar(select(ai_job.c.config))
    assert config == spec.config
    assert "api_key" not in config["options"]
    assert job.created_at == job.updated_at == clock.now
    assert job.result_image_urls is None  # the submit's record is light
    assert job.counts == {"queued": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert (await store.get_job("user-123", "job-1")).result_image_urls == []
    images = await store.images(job.id)
    assert [(i.position, i.sku, i.stem, i.status, i.attempts) for i in images] == [
        (0, "SKU1", "stem1", "queued", 0),
        (1, "SKU1", "stem2", "queued", 0),
        (2, "SKU1", "stem3", "queued", 0),
        (3, "SKU2", "stem4", "queued", 0),
        (4, "SKU3", "stem5", "queued", 0),
    ]
    assert [i.prompt for i in images] == [i.prompt for i in spec.images]
    assert await store.sealed_key(job.id) == SEALED
    progress = await store.progress("user-123", "job-1")
    assert progress.counts["queued"] == 5
    assert list(progress.per_sku) == ["SKU1", "SKU2", "SKU3"]
    assert progress.per_sku["SKU1"]["queued"] == 3


async def test_the_payload_is_jsonb_on_postgresql_and_compressed_on_sqlite(store: Store) -> None:
    """SQLite rewrites a whole row on every UPDATE: the payload is stored compressed there."""
    spec = make_spec()
    await store.submit(spec, SEALED)
    async with store.engine.connect() as conn:
        raw = await conn.scalar(text("SELECT config FROM ai_job"))
        if store.dialect == "postgresql":
            assert raw == spec.config  # jsonb: the seed's monitoring SQL reads it as written
            kind = await conn.scalar(text("SELECT jsonb_typeof(config) FROM ai_job"))
            assert kind == "object"
        else:
            assert isinstance(raw, bytes)
            assert json.loads(zlib.decompress(raw)) == spec.config
            # A row written before compression (JSON text) still reads back.
            await conn.execute(
                text("UPDATE ai_job SET config = :c"), {"c": json.dumps(spec.config)}
            )
            assert await conn.scalar(select(ai_job.c.config)) == spec.config


async def test_submit_is_one_transaction(store: Store) -> None:
    spec = make_spec()
    first = spec.images[0]
    broken = dataclasses.replace(spec, images=(first, first))  # duplicate position
    with pytest.raises(IntegrityError):
        await store.submit(broken, SEALED)
    assert await count(store, ai_job) == 0
    assert await count(store, ai_job_image) == 0
    # The job_id is still free.
    assert (await store.submit(spec, SEALED)).created


async def test_same_spec_again_returns_the_same_job(store: Store) -> None:
    first = await store.submit(make_spec(), SEALED)
    again = await store.submit(make_spec(), b"another-sealing")
    assert not again.created
    assert again.job.id == first.job.id
    assert again.job == first.job
    assert await count(store, ai_job) == 1
    assert await count(store, ai_job_image) == 5
    assert await store.sealed_key(first.job.id) == SEALED


async def test_concurrent_identical_submits_make_one_job(store: Store) -> None:
    results = await asyncio.gather(*(store.submit(make_spec(), SEALED) for _ in range(8)))
    assert sum(r.created for r in results) == 1
    assert len({r.job.id for r in results}) == 1
    assert await count(store, ai_job) == 1
    assert await count(store, ai_job_image) == 5


async def test_changed_payload_under_the_same_job_id_conflicts(store: Store) -> None:
    await store.submit(make_spec(), SEALED)
    with pytest.raises(JobConflict) as caught:
        await store.submit(make_spec(quality=50), SEALED)
    assert "job-1" in caught.value.message
    assert "different payload" in caught.value.message
    assert await count(store, ai_job) == 1
    assert await count(store, ai_job_image) == 5


async def test_job_id_is_per_user_and_optional(store: Store) -> None:
    mine = await store.submit(make_spec(), SEALED)
    theirs = await store.submit(make_spec(user="someone-else"), SEALED)
    assert theirs.created
    assert theirs.job.id != mine.job.id
    assert [j.job_id for j in await store.list_jobs("someone-else")] == ["job-1"]
    # Without a job_id every submission is a new job, named by its id.
    first = await store.submit(make_spec(None), SEALED)
    second = await store.submit(make_spec(None), SEALED)
    assert first.created
    assert second.created
    assert first.job.job_id == first.job.id
    assert second.job.job_id != first.job.job_id


async def test_claim_leases_tasks_once(store: Store, clock: Clock) -> None:
    job = (await store.submit(make_spec(), SEALED)).job
    tasks = await store.claim("w1", 2, LEASE)
    assert [(t.position, t.fence, t.attempts) for t in tasks] == [(0, 1, 1), (1, 1, 1)]
    assert all(t.job.id == job.id for t in tasks)
    assert all(t.first_started_at == clock.now for t in tasks)
    assert tasks[0].prompt == make_spec().images[0].prompt
    images = await store.images(job.id)
    assert [i.status for i in images] == ["running", "running", "queued", "queued", "queued"]
    assert images[0].started_at == clock.now
    assert (await store.get_job("user-123", "job-1")).status == "running"
    calls = await store.attempts(job.id)
    assert [(c.position, c.fence, c.worker, c.ended_at) for c in calls] == [
        (0, 1, "w1", None),
        (1, 1, "w1", None),
    ]
    # A second claim does not return leased tasks.
    second = await store.claim("w2", 10, LEASE)
    assert [t.position for t in second] == [2, 3, 4]
    assert {t.image_id for t in tasks}.isdisjoint(t.image_id for t in second)
    assert await store.claim("w3", 10, LEASE) == []


async def test_concurrent_claims_never_share_a_task(store: Store) -> None:
    await store.submit(make_spec(), SEALED)
    await store.submit(make_spec("job-2"), SEALED)
    batches = await asyncio.gather(*(store.claim(f"w{n}", 3, LEASE) for n in range(6)))
    ids = [t.image_id for batch in batches for t in batch]
    assert len(ids) == len(set(ids))
    assert ids
    # A claim may come back short while another holds the key (SKIP LOCKED); claims after
    # it take the rest, and no task is ever leased twice.
    for _ in range(10):
        ids += [t.image_id for t in await store.claim("w-late", 3, LEASE)]
    assert len(ids) == 10
    assert len(set(ids)) == 10


async def test_expired_lease_is_taken_over_and_the_late_worker_writes_nothing(
    store: Store, clock: Clock
) -> None:
    job = (await store.submit(make_spec(), SEALED)).job
    (stale,) = await store.claim("w1", 1, LEASE)
    clock.advance(LEASE - 1)
    assert await store.claim("w2", 1, LEASE) != []  # another image, not the leased one
    clock.advance(2)  # now past w1's lease
    (fresh,) = await store.claim("w3", 1, LEASE)
    assert fresh.image_id == stale.image_id
    assert (fresh.fence, fresh.attempts) == (stale.fence + 1, 2)

    before = (
        await store.images(job.id),
        await store.attempts(job.id),
        await store.get_job(None, "job-1"),
    )
    clock.advance(1)
    with pytest.raises(LeaseLost):
        await store.finish(stale, done(stale.position))
    with pytest.raises(LeaseLost):
        await store.finish(stale, Failed(error="late failure", error_kind="ProviderUnavailable"))
    after = (
        await store.images(job.id),
        await store.attempts(job.id),
        await store.get_job(None, "job-1"),
    )
    assert after == before
    assert await held(store, "w1", [stale.image_id], LEASE) == set()

    assert await store.finish(fresh, done(fresh.position)) == "running"
    image = (await store.images(job.id))[fresh.position]
    assert (image.status, image.result_url, image.attempts) == ("succeeded", "/files/0000.png", 2)
    outcomes = [(c.fence, c.worker, c.outcome) for c in await store.attempts(job.id)]
    assert (1, "w1", "lost") in outcomes
    assert (2, "w3", "succeeded") in outcomes


async def test_heartbeat_returns_held_ids_and_extends_the_lease(store: Store, clock: Clock) -> None:
    await store.submit(make_spec(), SEALED)
    mine = await store.claim("w1", 2, LEASE)
    ids = [t.image_id for t in mine]
    assert await held(store, "w1", [*ids, 999_999], LEASE) == set(ids)
    assert await held(store, "w2", ids, LEASE) == set()
    assert await held(store, "w1", [], LEASE) == set()

    clock.advance(LEASE - 5)
    assert await held(store, "w1", ids, LEASE) == set(ids)
    clock.advance(LEASE - 5)  # past the first lease, within the extended one
    others = await store.claim("w2", 10, LEASE)
    assert {t.image_id for t in others}.isdisjoint(ids)
    assert await held(store, "w1", ids, LEASE) == set(ids)


async def test_release_requeues_without_counting_an_attempt(store: Store, clock: Clock) -> None:
    job = (await store.submit(make_spec(), SEALED)).job
    (task,) = await store.claim("w1", 1, LEASE)
    clock.advance(1)
    await store.release(task)
    image = (await store.images(job.id))[0]
    assert (image.status, image.attempts) == ("queued", 0)
    assert await held(store, "w1", [task.image_id], LEASE) == set()
    (again,) = await store.claim("w2", 1, LEASE)
    assert again.image_id == task.image_id
    assert (again.fence, again.attempts) == (2, 1)
    with pytest.raises(LeaseLost):
        await store.finish(task, done(0))
    outcomes = [(c.fence, c.outcome) for c in await store.attempts(job.id)]
    assert outcomes == [(1, "released"), (2, None)]


async def test_result_urls_follow_payload_order_and_updated_at_moves(
    store: Store, clock: Clock
) -> None:
    created = (await store.submit(make_spec(), SEALED)).job
    clock.advance(5)
    tasks = {t.position: t for t in await store.claim("w1", 5, LEASE)}
    claimed = await store.get_job("user-123", "job-1")
    assert claimed.updated_at == clock.now > created.updated_at
    finished: list[int] = []
    statuses = []
    previous = claimed.updated_at
    for position in [4, 2, 0, 3, 1]:  # out of payload order
        clock.advance(1)
        statuses.append(await store.finish(tasks[position], done(position)))
        finished.append(position)
        job = await store.get_job("user-123", "job-1")
        assert job.result_image_urls == [done(p).result_url for p in sorted(finished)]
        assert job.updated_at == clock.now > previous
        assert job.created_at == created.created_at
        previous = job.updated_at
    assert statuses == ["running"] * 4 + ["succeeded"]
    job = await store.get_job("user-123", "job-1")
    assert job.finished_at == clock.now


async def test_job_fatal_failure_fails_every_queued_image(store: Store) -> None:
    job = (await store.submit(make_spec(), SEALED)).job
    (task,) = await store.claim("w1", 1, LEASE)
    reason = "AuthFailed: Incorrect API key provided"
    status = await store.finish(task, Failed(error=reason, error_kind="AuthFailed", fail_job=True))
    assert status == "failed"
    images = await store.images(job.id)
    assert [(i.status, i.error, i.error_kind) for i in images] == [
        ("failed", reason, "AuthFailed")
    ] * 5
    assert [i.attempts for i in images] == [1, 0, 0, 0, 0]  # the others never called
    ended = await store.get_job(None, "job-1")
    assert (ended.status, ended.error) == ("failed", reason)
    assert await store.claim("w2", 10, LEASE) == []


async def test_one_failed_image_leaves_the_others_running(store: Store) -> None:
    await store.submit(make_spec(), SEALED)
    tasks = await store.claim("w1", 5, LEASE)
    failed = Failed(error="ContentRejected: refused", error_kind="ContentRejected")
    assert await store.finish(tasks[0], failed) == "running"
    for task in tasks[1:]:
        await store.finish(task, done(task.position))
    job = await store.get_job(None, "job-1")
    assert job.status == "partially_failed"
    assert job.result_image_urls == [done(p).result_url for p in range(1, 5)]


async def test_requeue_waits_and_a_snooze_does_not_count(store: Store, clock: Clock) -> None:
    job = (await store.submit(make_spec(), SEALED)).job
    (task,) = await store.claim("w1", 1, LEASE)
    snooze = Requeue(
        run_after=clock.now + timedelta(seconds=10),
        error="RateLimited: slow down",
        error_kind="RateLimited",
        wait_seconds=10.0,
        consumes_attempt=False,
    )
    await store.finish(task, snooze)
    image = (await store.images(job.id))[0]
    assert (image.status, image.attempts, image.snoozes, image.calls) == ("queued", 0, 1, 1)
    claimed = await store.claim("w1", 10, LEASE)
    assert 0 not in [t.position for t in claimed]  # not due yet
    clock.advance(10)
    (again,) = await store.claim("w1", 10, LEASE)
    assert (again.position, again.attempts, again.snoozes, again.fence) == (0, 1, 1, 2)
    assert again.first_started_at == task.first_started_at


async def test_secret_is_erased_when_the_job_succeeds(store: Store) -> None:
    job = (await store.submit(make_spec(), SEALED)).job
    tasks = await store.claim("w1", 5, LEASE)
    for task in tasks[:-1]:
        await store.finish(task, done(task.position))
        assert await store.sealed_key(job.id) == SEALED  # still needed
    assert await store.finish(tasks[-1], done(tasks[-1].position)) == "succeeded"
    assert await store.sealed_key(job.id) is None


async def test_claim_keeps_to_each_provider_keys_window(migrated: str, clock: Clock) -> None:
    store = Store(create_engine(migrated), clock=clock, governor=GovernorParams(initial_window=2))
    try:
        await store.submit(make_spec("a"), SEALED)
        await store.submit(make_spec("b", api_key="sk-another-account-key"), SEALED)
        claimed = await store.claim("w1", 10, LEASE)
        assert sorted((t.job.job_id, t.position) for t in claimed) == [
            ("a", 0),
            ("a", 1),
            ("b", 0),
            ("b", 1),
        ]
        assert await store.claim("w2", 10, LEASE) == []
    finally:
        await store.close()


async def test_a_pinned_window_is_a_ceiling_the_learned_window_stays_under(
    migrated: str, clock: Clock
) -> None:
    spec = make_spec("pinned")
    store = Store(
        create_engine(migrated),
        clock=clock,
        pins={spec.provider.api_base.rstrip("/"): (3.0, None)},
    )
    try:
        await store.submit(spec, SEALED)
        first = await store.claim("w1", 10, LEASE)
        assert len(first) == 3  # starts at the pin, not small
        for task in first:
            await store.finish(task, done(task.position))
        # The provider said no: the learned window drops under the pin, and the claim obeys it.
        async with store.engine.begin() as conn:
            await conn.execute(provider_governor.update().values(window=1.0))
        assert len(await store.claim("w1", 10, LEASE)) == 1
    finally:
        await store.close()
