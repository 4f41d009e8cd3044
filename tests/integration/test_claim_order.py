"""The claim's order and admission, step by step on SQLite and PostgreSQL, with no sleeps.

A ``Queue`` drives a real ``Store`` by its public methods with a hand-moved clock and keeps
the same state as plain values; every claim is checked against the pure reference
(``policy.fairness.pick``), and the tests below also state the expected order outright.
Tasks are named ``<job>.<position>``.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence, Set
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from imagestudio.domain import ImageStatus
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy import fairness
from imagestudio.policy.fairness import scan
from imagestudio.policy.governor import GovernorParams, Observation
from imagestudio.store.db import create_engine, migrate_async
from imagestudio.store.records import ClaimedTask, Failed, Outcome, Requeue, Succeeded
from imagestudio.store.store import Store
from testkit.payloads import batch_payload

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
QUEUED, RUNNING = ImageStatus.QUEUED, ImageStatus.RUNNING
Pin = tuple[float | None, float | None]  # a key's (window, starts per second), as Store takes


def api_base(key: str) -> str:
    return f"https://{key}.example.com"


class Queue:
    """A real store and, beside it, the same queue as the reference's plain values."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        window: float = 64,
        lease: float = 600.0,
        pins: Mapping[str, Pin] | None = None,
        start: datetime = T0,
    ) -> None:
        self.now = start
        self.start = start.timestamp()
        self.lease = lease
        pinned = {f"{api_base(k)}/v1": pin for k, pin in (pins or {}).items()}
        self.store = Store(
            engine,
            clock=lambda: self.now,
            governor=GovernorParams(initial_window=window),
            pins=pinned,
        )
        self.jobs: dict[str, fairness.Job] = {}
        self.pks: dict[str, str] = {}
        self.tasks: dict[int, fairness.Task] = {}
        self.names: dict[int, str] = {}
        self.held: dict[int, ClaimedTask] = {}
        self.wake: float | None = None  # seconds after the start, as the last claim said

    @property
    def ts(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    async def submit(
        self,
        name: str,
        user: str,
        images_per_sku: Sequence[int] = (5,),
        *,
        key: str = "k1",
        cap: int | None = None,
        serial: bool = False,
    ) -> None:
        options = {"max_concurrency": cap, "sku_serial": serial}
        raw = batch_payload(api_base(key), name, images_per_sku=images_per_sku, options=options)
        spec = build_job_spec(parse_payload(raw), user_id=user, limits=IntakeLimits())
        job = (await self.store.submit(spec, b"sealed")).job
        self.pks[name] = job.id
        self.jobs[name] = fairness.Job(name, user, self.ts, job.provider_key, cap, serial)
        for image in await self.store.images(job.id):
            task = fairness.Task(image.id, name, image.position, image.sku, run_after=self.ts)
            self.tasks[image.id] = task
            self.names[image.id] = f"{name}.{image.position}"
        self.advance(1)  # every job has its own created_at: the order is total

    def id_of(self, name: str) -> int:
        return next(i for i, n in self.names.items() if n == name)

    async def claim(self, limit: int, *, tick: float = 0.0) -> list[str]:
        """Claim, check the reference agrees, and return the names claimed, in order."""
        states = {g.key: g.state for g in await self.store.governor_states()}
        tasks, jobs = list(self.tasks.values()), list(self.jobs.values())
        window = self.store.governor.initial_window
        expected = fairness.pick(
            jobs, tasks, states, now=self.ts, limit=limit, initial_window=window
        )
        got = await self.store.claim_batch("w", limit, self.lease)
        names = [self.names[t.image_id] for t in got.tasks]
        assert names == [self.names[i] for i in expected.ids], "the reference disagrees"
        assert got.wake_at == expected.wake_at, "the reference's wake_at disagrees"
        self.wake = None if got.wake_at is None else round(got.wake_at - self.start, 6)
        for task in fairness.rescue(tasks, self.ts):
            if task.status != self.tasks[task.id].status:
                self.tasks[task.id] = task
                del self.held[task.id]
        for c in got.tasks:
            self.held[c.image_id] = c
            until = self.ts + self.lease
            self._set(
                c.image_id, status=RUNNING, started_at=self.ts, in_call=True, lease_expires_at=until
            )
        self.advance(tick)
        return names

    def _set(self, image_id: int, **changes: object) -> None:
        self.tasks[image_id] = replace(self.tasks[image_id], **changes)  # type: ignore[arg-type]

    async def end_call(self, name: str, retry_after: float | None = None) -> None:
        """The task's provider call ended; with ``retry_after``, in a 429 saying so."""
        task = self.held[self.id_of(name)]
        said = Observation("rate_limited", self.ts, self.ts, retry_after=retry_after)
        await self.store.end_call(task, self.ts, None if retry_after is None else said)
        self._set(task.image_id, in_call=False)

    async def finish(self, name: str, outcome: Outcome | None = None) -> None:
        task = self.held.pop(self.id_of(name))
        outcome = outcome or Succeeded(result_key=name, result_url=f"/files/{name}")
        await self.store.finish(task, outcome)
        if isinstance(outcome, Requeue):
            self._set(task.image_id, status=QUEUED, run_after=outcome.run_after.timestamp())
        else:
            done = isinstance(outcome, Succeeded)
            self._set(task.image_id, status=ImageStatus.SUCCEEDED if done else ImageStatus.FAILED)
        if isinstance(outcome, Failed) and outcome.fail_job:
            self._end_job(self.tasks[task.image_id].job, {QUEUED}, ImageStatus.FAILED)

    async def requeue(self, name: str, seconds: float) -> None:
        when = self.now + timedelta(seconds=seconds)
        await self.finish(name, Requeue(when, "slow down", "RateLimited", seconds))

    async def release(self, name: str) -> None:
        task = self.held.pop(self.id_of(name))
        await self.store.release(task)
        self._set(
            task.image_id, status=QUEUED, run_after=self.ts, in_call=False, lease_expires_at=None
        )

    async def cancel(self, job: str) -> None:
        await self.store.cancel(self.pks[job])
        if any(t.job == job and t.status in fairness.ACTIVE for t in self.tasks.values()):
            self.jobs[job] = replace(self.jobs[job], cancel_requested=True)
        self._end_job(job, fairness.ACTIVE, ImageStatus.CANCELLED)

    def _end_job(self, job: str, statuses: Set[ImageStatus], to: ImageStatus) -> None:
        for task in list(self.tasks.values()):
            if task.job == job and task.status in statuses:
                self._set(task.id, status=to, in_call=False, lease_expires_at=None)
                self.held.pop(task.id, None)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    if db_url.startswith("sqlite"):  # PostgreSQL tests get a clone of a migrated template
        await migrate_async(db_url)
    built = create_engine(db_url)
    try:
        yield built
    finally:
        await built.dispose()


# -- fairness --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head_start", "limits", "expected"),
    [
        (0, [10], "A.0 B.0 A.1 B.1 A.2 B.2 A.3 B.3 A.4 B.4"),
        (0, [1] * 10, "A.0 B.0 A.1 B.1 A.2 B.2 A.3 B.3 A.4 B.4"),
        (3, [7], "B.0 B.1 B.2 B.3 A.3 B.4 A.4"),  # never served: ties go to B
        (3, [1] * 7, "B.0 B.1 B.2 A.3 B.3 A.4 B.4"),  # A served longer ago than B
        (3, [2, 2, 3], "B.0 B.1 B.2 A.3 B.3 A.4 B.4"),
    ],
)
async def test_a_small_job_is_not_stuck_behind_a_large_one(
    engine: AsyncEngine, head_start: int, limits: list[int], expected: str
) -> None:
    q = Queue(engine)
    await q.submit("A", "alice", (50,))
    if head_start:
        assert await q.claim(head_start, tick=1) == [f"A.{i}" for i in range(head_start)]
    await q.submit("B", "bob", (5,))
    claimed = [name for limit in limits for name in await q.claim(limit, tick=1)]
    assert claimed == expected.split()


@pytest.mark.parametrize(
    ("head_start", "expected"),
    [
        (0, "J1.0 J2.0 J1.1 J2.1 J1.2 J2.2 J1.3 J1.4"),
        (3, "J2.0 J2.1 J2.2 J1.3 J1.4 J1.5 J1.6 J1.7"),  # J1 has 3 running: J2 catches up
    ],
)
async def test_the_jobs_of_one_user_take_turns(
    engine: AsyncEngine, head_start: int, expected: str
) -> None:
    q = Queue(engine)
    await q.submit("J1", "alice", (10,))
    if head_start:
        await q.claim(head_start)
    await q.submit("J2", "alice", (3,))
    assert await q.claim(8) == expected.split()


@pytest.mark.parametrize(
    ("tick", "expected"),
    [
        (1.0, "a.0 b.0 c.0 a.1 b.1 c.1 a.2 b.2 c.2"),  # the slot rotates
        (0.0, "a.0 b.0 c.0 a.1 a.2 b.1 b.2 c.1 c.2"),  # served at the same instant: job age
    ],
)
async def test_equal_turns_go_to_the_user_served_longest_ago(
    engine: AsyncEngine, tick: float, expected: str
) -> None:
    q = Queue(engine, pins={"k1": (1.0, None)})
    for user in "abc":
        await q.submit(user, user, (3,))
    claimed = []
    for _ in range(9):
        (name,) = await q.claim(1, tick=tick)
        await q.finish(name)
        claimed.append(name)
    assert claimed == expected.split()


# -- admission -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        (None, "A.0 B.0 A.1 B.1 A.2 A.3 A.4"),
        (1, "A.0 B.0 B.1"),
        (2, "A.0 B.0 A.1 B.1"),
        (3, "A.0 B.0 A.1 B.1 A.2"),
    ],
)
async def test_max_concurrency_caps_a_job(
    engine: AsyncEngine, cap: int | None, expected: str
) -> None:
    q = Queue(engine)
    await q.submit("A", "alice", (5,), cap=cap)
    await q.submit("B", "bob", (2,))
    assert await q.claim(10) == expected.split()
    if cap is not None:
        assert await q.claim(10) == []
        await q.finish("A.0")
        assert await q.claim(10) == [f"A.{cap}"]


@pytest.mark.parametrize(
    ("serial", "expected"), [(False, "A.0 A.1 A.2 A.3 A.4"), (True, "A.0 A.3 A.4")]
)
async def test_sku_serial_waits_for_the_earlier_image(
    engine: AsyncEngine, serial: bool, expected: str
) -> None:
    q = Queue(engine)
    await q.submit("A", "alice", (3, 1, 1), serial=serial)  # SKU1 = 0, 1, 2; SKU2 = 3; SKU3 = 4
    assert await q.claim(10) == expected.split()
    if serial:
        await q.finish("A.0")
        assert await q.claim(10) == ["A.1"]
        await q.requeue("A.1", 10)  # backed off: A.2 still waits behind it
        assert await q.claim(10) == []
        assert q.wake == 1 + 10
        q.advance(10)
        assert await q.claim(10) == ["A.1"]


@pytest.mark.parametrize(("window", "admitted"), [(1.0, 1), (2.0, 2), (2.5, 2), (4.0, 4)])
async def test_the_provider_window_bounds_calls_in_flight(
    engine: AsyncEngine, window: float, admitted: int
) -> None:
    q = Queue(engine, pins={"k1": (window, None)})
    await q.submit("A", "alice", (6,))
    assert await q.claim(10) == [f"A.{i}" for i in range(admitted)]
    assert await q.claim(10) == []
    await q.end_call("A.0")  # still running, but its call is over: the slot frees
    assert await q.claim(10) == [f"A.{admitted}"]


async def test_the_window_is_shared_in_fair_order_and_keys_are_independent(
    engine: AsyncEngine,
) -> None:
    q = Queue(engine, pins={"k1": (3.0, None), "k2": (1.0, None)})
    await q.submit("A", "alice", (5,))
    await q.submit("B", "bob", (5,))
    await q.submit("C", "carol", (5,), key="k2")
    assert await q.claim(10) == "A.0 B.0 C.0 A.1".split()


async def test_a_cooldown_holds_the_key_back_until_it_ends(engine: AsyncEngine) -> None:
    q = Queue(engine, window=4)
    await q.submit("A", "alice", (3,))
    await q.submit("B", "bob", (3,), key="k2")
    assert await q.claim(1) == ["A.0"]
    await q.end_call("A.0", retry_after=30)  # a 429: no call on k1 for 30 s
    assert await q.claim(10) == "B.0 B.1 B.2".split()
    assert q.wake == 2 + 30
    q.advance(29.5)
    assert await q.claim(10) == []
    q.advance(0.5)
    assert await q.claim(10) == ["A.1"]  # the 429 also shrank k1's window to 1


async def test_a_back_off_holds_the_task_back_and_wake_at_says_until_when(
    engine: AsyncEngine,
) -> None:
    q = Queue(engine)
    await q.submit("A", "alice", (3,))
    assert await q.claim(1) == ["A.0"]
    await q.requeue("A.0", 10)
    assert await q.claim(5) == "A.1 A.2".split()
    assert q.wake == 1 + 10
    q.advance(9)
    assert await q.claim(5) == []
    q.advance(1)
    assert await q.claim(5) == ["A.0"]
    assert q.wake is None


async def test_a_paced_key_starts_one_call_per_interval(engine: AsyncEngine) -> None:
    q = Queue(engine, pins={"k1": (None, 0.5)})  # a start every 2 s
    await q.submit("A", "alice", (3,))
    assert await q.claim(5) == ["A.0"]
    assert q.wake == 1 + 1  # half an interval of slack for the first start
    q.advance(1)
    assert await q.claim(5) == ["A.1"]
    assert await q.claim(5) == []
    assert q.wake == 1 + 3


async def test_a_cancelled_job_starts_nothing_and_frees_its_slots(engine: AsyncEngine) -> None:
    q = Queue(engine, pins={"k1": (2.0, None)})
    await q.submit("A", "alice", (3,))
    await q.submit("B", "bob", (3,))
    assert await q.claim(5) == "A.0 B.0".split()
    assert await q.claim(5) == []
    await q.cancel("A")
    assert await q.claim(5) == ["B.1"]
    await q.finish("B.0")
    await q.finish("B.1")
    assert await q.claim(5) == ["B.2"]
    assert await q.claim(5) == []


# -- the reference on random queues ----------------------------------------------------

CASES_PER_SEED = 40  # 5 seeds: 200 random queues per database
PIN_WINDOWS, PIN_RATES = [None, None, None, 1.0, 2.5, 6.0], [None, None, None, None, 2.0, 0.5]


async def random_case(engine: AsyncEngine, rng: random.Random, case: int) -> None:
    keys = [f"c{case}k{i}" for i in range(rng.randint(1, 2))]
    pins: dict[str, Pin] = {k: (rng.choice(PIN_WINDOWS), rng.choice(PIN_RATES)) for k in keys}
    start = T0 + timedelta(days=case)  # the cases before are over: nothing they left counts
    q = Queue(engine, window=rng.choice([2, 4, 8]), lease=20, pins=pins, start=start)
    users = [f"c{case}u{i}" for i in range(rng.randint(1, 4))]
    for j in range(rng.randint(1, 4)):
        await random_job(q, rng, f"c{case}j{j}", users, keys)
    for _ in range(rng.randint(10, 25)):
        await random_step(q, rng, users, keys)
    for job in q.jobs:
        await q.cancel(job)


async def random_job(
    q: Queue, rng: random.Random, name: str, users: list[str], keys: list[str]
) -> None:
    skus = [rng.randint(1, 4) for _ in range(rng.randint(1, 3))]
    cap, serial = rng.choice([None, None, 1, 2, 3]), rng.random() < 0.3
    await q.submit(name, rng.choice(users), skus, key=rng.choice(keys), cap=cap, serial=serial)


MOVES = {  # how often each move is drawn
    "claim": 7.0, "finish": 5.0, "end": 3.0, "back": 2.0, "advance": 3.0,
    "release": 1.0, "cancel": 0.3, "submit": 0.5,
}  # fmt: skip


async def random_step(q: Queue, rng: random.Random, users: list[str], keys: list[str]) -> None:
    held = sorted(q.names[i] for i in q.held)
    in_call = sorted(q.names[i] for i in q.held if q.tasks[i].in_call)
    move = rng.choices(list(MOVES), list(MOVES.values()))[0]
    if move == "finish" and held:
        kind = rng.choice([None, None, None, Failed("bad", "BadImage"), Failed("no", "Auth", True)])
        await q.finish(rng.choice(held), kind)
    elif move == "end" and in_call:
        await q.end_call(rng.choice(in_call), rng.choice([None, None, None, None, 5.0, 12.5]))
    elif move == "back" and held:
        await q.requeue(rng.choice(held), rng.choice([0, 3, 7]))
    elif move == "release" and held:
        await q.release(rng.choice(held))
    elif move == "advance":
        q.advance(rng.choice([1, 2.5, 6, 15]))
    elif move == "cancel":
        await q.cancel(rng.choice(list(q.jobs)))
    elif move == "submit":
        await random_job(q, rng, f"{next(iter(q.jobs))}x{len(q.jobs)}", users, keys)
    else:
        await q.claim(rng.randint(1, 6))


@pytest.mark.parametrize("seed", range(5))
async def test_the_claim_picks_what_the_reference_says(engine: AsyncEngine, seed: int) -> None:
    rng = random.Random(seed)
    for case in range(seed * CASES_PER_SEED, (seed + 1) * CASES_PER_SEED):
        try:
            await random_case(engine, rng, case)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, case {case}: {exc}") from exc


# -- the claim's cost ------------------------------------------------------------------


def _plan_rows(node: dict[str, object], alias: str) -> int:
    """Rows the plan's scans of ``alias`` returned, over all their loops."""
    own = 0
    if node.get("Alias") == alias:
        own = int(node["Actual Rows"]) * int(node["Actual Loops"])  # type: ignore[call-overload]
    children = node.get("Plans", [])
    assert isinstance(children, list)
    return own + sum(_plan_rows(child, alias) for child in children)


@contextlib.contextmanager
def heads_statements(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """The heads statements the claim sends, as the driver got them (SQL, parameters)."""
    sent: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if "heads" in sql or "arm_0" in sql:
            sent.append((sql, params))

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)


async def test_the_heads_read_is_bounded_by_the_heads_asked_for(engine: AsyncEngine) -> None:
    """However deep the queue, the heads read takes the first rows of each job through the
    ``(job_pk, status, position)`` index (PostgreSQL: rows counted by EXPLAIN ANALYZE)."""
    q = Queue(engine)
    await q.submit("A", "alice", (2000,))
    await q.submit("B", "bob", (400, 400), serial=True)
    with heads_statements(engine) as sent:
        assert await q.claim(3) == ["A.0", "B.0", "A.1"]
    ((sql, params),) = sent
    index = "ix_ai_job_image_job_pk_status_position"
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            found = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            plan = found.scalar_one()
            plan = plan if isinstance(plan, list) else json.loads(plan)
            # A: its heads; B: its two SKUs' first images, stepping over SKU 1's other 399
            rows = _plan_rows(plan[0]["Plan"], "ai_job_image")
            assert scan(3) <= rows <= 2 * scan(3) + 400, rows
            assert index in json.dumps(plan)
        else:
            plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)).all()
            steps = " ".join(str(r) for r in plan)
            assert f"SEARCH img_0 USING INDEX {index} (job_pk=? AND status=?)" in steps
            assert "TEMP B-TREE" not in steps  # the queue is not sorted
