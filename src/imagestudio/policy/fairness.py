"""The claim's order and admission, as a pure reference (no I/O, no SQL).

``pick`` answers what ``Store.claim_batch`` answers, from plain values: which queued tasks
start now, in what order. It mirrors ``store.claim_sql`` (the candidates query) followed by
``policy.pace.apply_pace`` (the per-key pace), and it exists so the two can be checked against
each other on random queues; a rewrite of the claim keeps it as the specification.

The steps, each one a filter or a ranking over the previous step's survivors:

1. *Due*: queued, ``run_after <= now``, the job not being cancelled, and for a ``sku_serial``
   job no earlier image of the same SKU queued (due or not) or running.
2. *Job turn*: the job's running tasks + the task's rank among the job's due tasks (by
   position). A task whose job turn exceeds the job's ``max_concurrency`` is dropped here,
   so it takes no turn below.
3. *User turn*: the user's running tasks + the task's rank among the user's remaining tasks,
   ranked by (job turn, job created_at, position).
4. *Fair order*: (user turn, user served longest ago first - never served first, job turn,
   job created_at, position). A user's *served* time is the last ``started_at`` of any task
   (whatever its status now) of the user's unfinished jobs.
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

``wake_at`` is the earliest of the pace's next slot, the next queued task's ``run_after`` and
the next ``cooldown_until`` of any key, each only if it is after ``now``.

Every turn is computed once, from the state before the claim: the tasks one claim picks are
ranked against each other as if none of them had started.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
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
class Pick:
    ids: list[int]
    wake_at: float | None


@dataclass(frozen=True, slots=True)
class _Ranked:
    task: Task
    job: Job
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
            self.task.position,
        )


def rescue(tasks: Iterable[Task], now: float) -> list[Task]:
    """Running tasks whose lease expired are queued again, due now (the claim does it first)."""
    return [
        replace(t, status=QUEUED, run_after=now, in_call=False, lease_expires_at=None)
        if t.status == RUNNING and t.lease_expires_at is not None and t.lease_expires_at < now
        else t
        for t in tasks
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
    by_id = {j.id: j for j in jobs}
    tasks = rescue(tasks, now)
    ranked = _user_turns(_job_turns(_due(by_id, tasks, now), tasks), by_id, tasks)
    fair = sorted(_within_windows(ranked, by_id, tasks, governors, now, initial_window), key=_key)
    paced = apply_pace(
        [(r.task.id, r.job.provider_key) for r in fair[: scan(limit)]],
        dict(governors),
        now,
        limit,
    )
    return Pick(paced.ids, _wake_at(paced.wake_at, tasks, governors, now))


def _key(r: _Ranked) -> tuple[int, bool, float, int, float, int]:
    return r.fair_key()


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


def _running(tasks: Sequence[Task], of: Callable[[Task], str]) -> Counter[str]:
    return Counter(of(t) for t in tasks if t.status == RUNNING)


def _job_turns(due: Sequence[Task], tasks: Sequence[Task]) -> list[tuple[Task, int]]:
    running = _running(tasks, lambda t: t.job)
    rank: Counter[str] = Counter()
    turns = []
    for t in sorted(due, key=lambda t: (t.job, t.position)):
        rank[t.job] += 1
        turns.append((t, running[t.job] + rank[t.job]))
    return turns


def _user_turns(
    turns: Sequence[tuple[Task, int]], jobs: Mapping[str, Job], tasks: Sequence[Task]
) -> list[_Ranked]:
    capped = [_Ranked(t, jobs[t.job], turn) for t, turn in turns if _under_cap(jobs[t.job], turn)]
    running = _running(tasks, lambda t: jobs[t.job].user)
    served = _served(jobs, tasks)
    rank: Counter[str] = Counter()
    ranked = []
    for r in sorted(
        capped, key=lambda r: (r.job.user, r.job_turn, r.job.created_at, r.task.position)
    ):
        user = r.job.user
        rank[user] += 1
        ranked.append(replace(r, user_turn=running[user] + rank[user], served=served.get(user)))
    return ranked


def _under_cap(job: Job, job_turn: int) -> bool:
    return job.max_concurrency is None or job_turn <= job.max_concurrency


def _served(jobs: Mapping[str, Job], tasks: Sequence[Task]) -> dict[str, float]:
    """When each user of an unfinished job last had a task of such a job started."""
    unfinished = {t.job for t in tasks if t.status in ACTIVE}
    served: dict[str, float] = {}
    for t in tasks:
        if t.job in unfinished and t.started_at is not None:
            user = jobs[t.job].user
            served[user] = max(served.get(user, t.started_at), t.started_at)
    return served


def _within_windows(
    ranked: Sequence[_Ranked],
    jobs: Mapping[str, Job],
    tasks: Sequence[Task],
    governors: Mapping[str, GovernorState],
    now: float,
    initial_window: float,
) -> list[_Ranked]:
    in_call = Counter(jobs[t.job].provider_key for t in tasks if t.status == RUNNING and t.in_call)
    per_key: dict[str, list[_Ranked]] = defaultdict(list)
    for r in sorted(ranked, key=_key):
        per_key[r.job.provider_key].append(r)
    kept: list[_Ranked] = []
    for key, rows in per_key.items():
        state = governors.get(key)
        if state is not None and state.cooldown_until > now:
            continue
        window = initial_window if state is None else state.effective_window
        kept.extend(r for rank, r in enumerate(rows, 1) if in_call[key] + rank <= window)
    return kept


def _wake_at(
    paced: float | None,
    tasks: Sequence[Task],
    governors: Mapping[str, GovernorState],
    now: float,
) -> float | None:
    due = [t.run_after for t in tasks if t.status == QUEUED and t.run_after > now]
    cooled = [g.cooldown_until for g in governors.values() if g.cooldown_until > now]
    times = [t for t in (paced, min(due, default=None), min(cooled, default=None)) if t is not None]
    return min(times) if times else None
