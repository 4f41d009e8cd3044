"""The counts on the job row (``ai_job.n_<status>``) against the images themselves.

Random sequences of submit, claim, finish (every outcome), cancel, retry, release and lease
expiry drive the real ``Store`` on SQLite and PostgreSQL; after every step each job's counts
must equal ``counts.recount`` (the images grouped by status), its result URLs the succeeded
images' in payload order (these jobs are small: rebuilt on every change), and its status the
roll-up of its counts once nothing of it runs.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imagestudio.errors import LeaseLost
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.governor import GovernorParams
from imagestudio.policy.rollup import rollup_status
from imagestudio.store import counts
from imagestudio.store.db import create_engine
from imagestudio.store.records import ClaimedTask, Failed, Outcome, Requeue, Succeeded
from imagestudio.store.store import Store
from testkit.payloads import batch_payload

LEASE = 30.0
STEPS = 80
SEEDS = (1, 2, 3)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def store(migrated: str) -> AsyncIterator[Store]:
    built = Store(
        create_engine(migrated), clock=Clock(), governor=GovernorParams(initial_window=64)
    )
    try:
        yield built
    finally:
        await built.close()


class Driver:
    """One random sequence: what was submitted and which attempts are held."""

    def __init__(self, store: Store, rng: random.Random) -> None:
        self.store, self.rng = store, rng
        self.jobs: list[tuple[str, str]] = []  # (pk, job_id)
        self.held: list[ClaimedTask] = []

    @property
    def clock(self) -> Clock:
        assert isinstance(self.store.clock, Clock)
        return self.store.clock

    async def step(self) -> str:
        actions = ["submit", "claim", "claim", "finish", "finish", "finish", "cancel", "retry"]
        actions += ["release", "expire"]
        action = self.rng.choice(actions if self.jobs else ["submit"])
        await getattr(self, action)()
        return action

    async def submit(self) -> None:
        job_id = f"job-{len(self.jobs)}"
        sizes = [self.rng.randint(1, 4) for _ in range(self.rng.randint(1, 3))]
        raw = batch_payload("https://cdn.example.com", job_id, images_per_sku=sizes)
        spec = build_job_spec(parse_payload(raw), user_id="u", limits=IntakeLimits())
        result = await self.store.submit(spec, b"sealed")
        self.jobs.append((result.job.id, job_id))

    async def claim(self) -> None:
        self.held += await self.store.claim("w", self.rng.randint(1, 6), LEASE)

    async def finish(self) -> None:
        if not self.held:
            return
        task = self.held.pop(self.rng.randrange(len(self.held)))
        try:
            await self.store.finish(task, self._outcome(task))
        except LeaseLost:
            pass  # cancelled or taken over meanwhile: nothing was written

    def _outcome(self, task: ClaimedTask) -> Outcome:
        now = self.clock.now
        choices: list[Outcome] = [
            Succeeded(
                result_key=f"{task.job_pk}/{task.position}", result_url=f"/r/{task.position}"
            ),
            Requeue(run_after=now, error="503", error_kind="ProviderUnavailable", wait_seconds=0),
            Requeue(
                run_after=now,
                error="429",
                error_kind="RateLimited",
                wait_seconds=0,
                consumes_attempt=False,
            ),
            Failed(error="refused", error_kind="ContentRejected"),
            Failed(error="bad key", error_kind="AuthFailed", fail_job=True),
        ]
        return self.rng.choices(choices, weights=[6, 2, 1, 2, 1])[0]

    async def cancel(self) -> None:
        await self.store.cancel(self.rng.choice(self.jobs)[0])

    async def retry(self) -> None:
        await self.store.retry_failed(self.rng.choice(self.jobs)[0], b"sealed-2", "sk-new-key-1")

    async def release(self) -> None:
        if self.held:
            await self.store.release(self.held.pop(self.rng.randrange(len(self.held))))

    async def expire(self) -> None:
        """Every lease runs out: the next claim rescues them (the worker 'died')."""
        self.clock.now += timedelta(seconds=LEASE + 1)

    async def check(self, after: str) -> None:
        for pk, job_id in self.jobs:
            job = await self.store.get_job("u", job_id)
            async with self.store.engine.connect() as conn:
                truth = await counts.recount(conn, pk)
            assert job.counts == truth, f"{job_id} after {after}"
            assert sum(truth.values()) == job.total
            images = await self.store.images(pk)
            succeeded = [i.result_url for i in images if i.status == "succeeded"]
            assert job.result_image_urls == succeeded, f"{job_id} after {after}"
            if not truth["running"] and after != "claim":
                expected = rollup_status(
                    truth, cancel_requested=job.cancel_requested, started=job.status != "queued"
                )
                assert job.status == expected.value, f"{job_id} after {after}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_counts_on_the_job_row_equal_a_recount(store: Store, seed: int) -> None:
    driver = Driver(store, random.Random(seed))
    done: dict[str, int] = {}
    for _ in range(STEPS):
        action = await driver.step()
        done[action] = done.get(action, 0) + 1
        await driver.check(action)
    assert done.get("finish", 0) > 10, done
    assert done.get("claim", 0) > 5, done


async def test_a_job_that_ended_counts_every_image_once(store: Store) -> None:
    driver = Driver(store, random.Random(7))
    for _ in range(3):
        await driver.submit()
    for _ in range(100):
        if not await store.has_pending():
            break
        await driver.claim()
        while driver.held:
            task = driver.held.pop()
            outcome: Any = Succeeded(result_key=f"{task.job_pk}/{task.position}", result_url="/r")
            await store.finish(task, outcome)
    async with store.engine.connect() as conn:
        for pk, _ in driver.jobs:
            assert (await counts.recount(conn, pk))["succeeded"] > 0
    for _, job_id in driver.jobs:
        job = await store.get_job("u", job_id)
        assert job.status == "succeeded"
        assert job.counts["succeeded"] == job.total
        assert len(job.result_image_urls or []) == job.total
