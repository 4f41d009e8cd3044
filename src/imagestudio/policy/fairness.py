"""The claim's order and admission, pure (no I/O, no SQL), over a bounded view of the queue.

``Store.claim_batch`` reads a ``View`` (the active jobs, each job's *heads*, the running
tasks, each user's served time) and calls ``candidates`` then ``policy.pace.apply_pace``;
``pick`` does the same from plain values (every task of the queue, ``view_of``), so the two
can be checked against each other on random queues, and it is the specification a rewrite
of the claim keeps.

The rule, each step a filter or a ranking over the previous step's survivors:

1. *Due*: queued, ``run_after <= now``, the job not being cancelled, and for a ``sku_serial``
   job no earlier image of the same SKU queued (due or not) or running.
2. *Job turn*: the job's running tasks + the task's rank among the job's due tasks (by
   position). A task whose job turn exceeds the job's ``max_concurrency`` is dropped here,
   so it takes no turn below.
3. *User turn*: the user's running tasks + the task's rank among the user's remaining tasks,
   ranked by (job turn, job created_at, position).
4. *Fair order*: (user turn, user served longest ago first - never served first, job turn,
   job created_at, position). A user's *served* time is the last start of any task of the
   user's unfinished jobs (``ai_job.last_started_at``, the latest over those jobs).
5. *Window*: keys in cooldown (``cooldown_until > now``) are dropped; per key, the tasks in
   fair order get a key turn: the key's running tasks whose provider call has not ended +
   rank. Those with a key turn above the key's window (``effective_window``, or the initial
   window for a key without a governor row) are dropped.
   The user turns were given before this step: a task held back by its key's window or
   cooldown still took one of its user's turns on every other key.
6. The first ``scan(limit) = limit * 3 + 8`` in fair order are read, then walked by
   ``apply_pace`` keeping at most ``limit``; a free key's task behind them waits.

Running tasks whose lease expired are first queued again, due now (``rescue``). A job is
unfinished while any of its tasks is queued or running (its roll-up says so too).

**Why a bounded view gives the same answer** (S = ``scan(limit)``). Only a job's first S due
tasks can be among the S read in step 6: a later one has S tasks of its own job, same key,
before it in fair order, kept whenever it is. Dropping the rest changes nothing: a task that
would only be kept because they are gone comes after S kept tasks (the proof is in
``tests/unit/test_fairness.py``, which checks it against the full ranking on random queues).
The user turns of those first S need the user's other jobs' due tasks only up to job turn
``R + S`` (R: the most running tasks of any of the user's jobs), so ``head_limits`` asks each
job for ``S + R - (its own running)`` heads, fewer if its cap leaves less room. The claim
then costs O(active jobs x heads + running tasks), whatever the number of queued tasks.

``wake_at`` is the earliest of the pace's next slot, the next queued task's ``run_after`` and
the next ``cooldown_until`` of any key, each only if it is after ``now``.

Every turn is computed once, from the state before the claim: the tasks one claim picks are
ranked against each other as if none of them had started.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from imagestudio.domain import ImageStatus
from imagestudio.policy.governor import GovernorState
from imagestudio.policy.pace import apply_pace

QUEUED, RUNNING = ImageStatus.QUEUED, ImageStatus.RUNNING
ACTIVE = frozenset({QUEUED, RUNNING})


def scan(limit: int) -> int:
    """How many candidates in fair order the claim reads before pacing them."""
    return limit * 3 + 8


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    user: str
    created_at: float  # epoch seconds; distinct per job keeps the order total
    provider_key: str
    max_concurrency: int | None = None
    sku_serial: bool = False
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    """One image task, in any status."""

    id: int
    job: str
    position: int
    sku: str
    status: ImageStatus = QUEUED
    run_after: float = 0.0
    started_at: float | None = None  # the last lease; kept after it ends
    in_call: bool = False  # running and its provider call has not ended
    lease_expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Head:
    """A due task that may start as far as its job is concerned (step 1), by position."""

    id: int
    position: int


@dataclass(frozen=True, slots=True)
class Running:
    """A running task: whose it is, on which key, and whether its provider call is on."""

    job: str
    user: str
    key: str
    in_call: bool


@dataclass(frozen=True, slots=True)
class View:
    """What a claim decides from: bounded by active jobs x heads + running tasks.

    ``jobs``: the unfinished jobs not being cancelled; ``heads``: per job its first
    ``head_limits`` heads in position order (all of them if it has fewer); ``served``: per user,
    the last start among the user's unfinished jobs.
    """

    jobs: Sequence[Job]
    heads: Mapping[str, Sequence[Head]]
    running: Sequence[Running]
    served: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Pick:
    ids: list[int]
    wake_at: float | None


@dataclass(frozen=True, slots=True)
class _Ranked:
    head: Head
    job: Job
    rank: int  # among the job's heads
    job_turn: int
    user_turn: int = 0
    served: float | None = None

    def fair_key(self) -> tuple[int, bool, float, int, float, int]:
        served = self.served
        return (
            self.user_turn,
            served is not None,
            served or 0.0,
            self.job_turn,
            self.job.created_at,
            self.head.position,
        )


def _room(job: Job, running: int) -> int | None:
    """How many more tasks the job's cap lets start (``None``: no cap)."""
    return None if job.max_concurrency is None else max(0, job.max_concurrency - running)


def head_limits(jobs: Sequence[Job], running: Sequence[Running], limit: int) -> dict[str, int]:
    """How many heads each job must show for ``candidates`` to be exact (none: left out)."""
    job_running = Counter(r.job for r in running)
    most: dict[str, int] = defaultdict(int)  # the most running tasks of any job, per user
    for job in jobs:
        most[job.user] = max(most[job.user], job_running[job.id])
    limits = {}
    for job in jobs:
        n = scan(limit) + most[job.user] - job_running[job.id]
        room = _room(job, job_running[job.id])
        n = n if room is None else min(n, room)
        if n > 0:
            limits[job.id] = n
    return limits


def candidates(
    view: View,
    governors: Mapping[str, GovernorState],
    *,
    now: float,
    limit: int,
    initial_window: float = 4.0,
) -> list[tuple[int, str]]:
    """The first ``scan(limit)`` ``(task id, key)`` in fair order within the windows (steps 2-6
    before the pace)."""
    fair = sorted(_ranked(view, scan(limit)), key=_Ranked.fair_key)
    in_call = Counter(r.key for r in view.running if r.in_call)
    kept: list[_Ranked] = []
    seen: Counter[str] = Counter()
    for r in fair:
        key = r.job.provider_key
        state = governors.get(key)
        if state is not None and state.cooldown_until > now:
            continue
        window = initial_window if state is None else state.effective_window
        seen[key] += 1
        if in_call[key] + seen[key] <= window:
            kept.append(r)
    return [(r.head.id, r.job.provider_key) for r in kept[: scan(limit)]]


def fair_order(view: View, first: int) -> list[tuple[int, Job]]:
    """Every job's first ``first`` heads (within its cap) in fair order, before the windows:
    ``(task id, job)``. What ``candidates`` walks; ``policy.waiting`` explains from it."""
    return [(r.head.id, r.job) for r in sorted(_ranked(view, first), key=_Ranked.fair_key)]


def _ranked(view: View, first: int) -> list[_Ranked]:
    """Job and user turns of every job's first ``first`` heads (within the cap)."""
    job_running = Counter(r.job for r in view.running)
    user_running = Counter(r.user for r in view.running)
    by_user: dict[str, list[_Ranked]] = defaultdict(list)
    for job in view.jobs:
        heads = list(view.heads.get(job.id, ()))
        room = _room(job, job_running[job.id])
        for rank, head in enumerate(heads if room is None else heads[:room], 1):
            turn = job_running[job.id] + rank
            by_user[job.user].append(_Ranked(head, job, rank, turn))
    ranked: list[_Ranked] = []
    for user, rows in by_user.items():
        rows.sort(key=lambda r: (r.job_turn, r.job.created_at, r.head.position))
        served = view.served.get(user)
        ranked.extend(
            replace(r, user_turn=user_running[user] + i, served=served)
            for i, r in enumerate(rows, 1)
            if r.rank <= first
        )
    return ranked


def wake_at(
    paced: float | None,
    next_due: float | None,
    governors: Mapping[str, GovernorState],
    now: float,
) -> float | None:
    """The earliest of the pace's next slot, the next due task, the next cooldown's end."""
    cooled = [g.cooldown_until for g in governors.values() if g.cooldown_until > now]
    times = [t for t in (paced, next_due, min(cooled, default=None)) if t is not None]
    return min(times) if times else None


# -- the same from every task of the queue ----------------------------------------------------


def rescue(tasks: Iterable[Task], now: float) -> list[Task]:
    """Running tasks whose lease expired are queued again, due now (the claim does it first)."""
    return [
        replace(t, status=QUEUED, run_after=now, in_call=False, lease_expires_at=None)
        if t.status == RUNNING and t.lease_expires_at is not None and t.lease_expires_at < now
        else t
        for t in tasks
    ]


def view_of(jobs: Sequence[Job], tasks: Sequence[Task], *, now: float, limit: int) -> View:
    """The ``View`` a claim at ``now`` reads, from every job and task (rescued already)."""
    by_id = {j.id: j for j in jobs}
    unfinished = {t.job for t in tasks if t.status in ACTIVE}
    running = [
        Running(t.job, by_id[t.job].user, by_id[t.job].provider_key, t.in_call)
        for t in tasks
        if t.status == RUNNING
    ]
    active = [j for j in jobs if j.id in unfinished and not j.cancel_requested]
    limits = head_limits(active, running, limit)
    heads: dict[str, list[Head]] = defaultdict(list)
    for t in sorted(_due(by_id, tasks, now), key=lambda t: (t.job, t.position)):
        if len(heads[t.job]) < limits.get(t.job, 0):
            heads[t.job].append(Head(t.id, t.position))
    served: dict[str, float] = {}
    for t in tasks:
        if t.job in unfinished and t.started_at is not None:
            user = by_id[t.job].user
            served[user] = max(served.get(user, t.started_at), t.started_at)
    return View(active, heads, running, served)


def _due(jobs: Mapping[str, Job], tasks: Sequence[Task], now: float) -> list[Task]:
    def blocked(t: Task) -> bool:
        return any(
            e.job == t.job and e.sku == t.sku and e.position < t.position and e.status in ACTIVE
            for e in tasks
        )

    return [
        t
        for t in tasks
        if t.status == QUEUED
        and t.run_after <= now
        and not jobs[t.job].cancel_requested
        and not (jobs[t.job].sku_serial and blocked(t))
    ]


def pick(
    jobs: Sequence[Job],
    tasks: Sequence[Task],
    governors: Mapping[str, GovernorState],
    *,
    now: float,
    limit: int,
    initial_window: float = 4.0,
) -> Pick:
    """The ids ``claim_batch(limit)`` leases at ``now``, in order, and its ``wake_at``."""
    if limit <= 0:
        return Pick([], None)
    tasks = rescue(tasks, now)
    view = view_of(jobs, tasks, now=now, limit=limit)
    found = candidates(view, governors, now=now, limit=limit, initial_window=initial_window)
    paced = apply_pace(found, dict(governors), now, limit)
    due = min(
        (t.run_after for t in tasks if t.status == QUEUED and t.run_after > now), default=None
    )
    return Pick(paced.ids, wake_at(paced.wake_at, due, governors, now))
