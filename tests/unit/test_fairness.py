"""The pure reference of the claim's order and admission, as a table (no database).

Each job is written as a string of its tasks' states by position: ``q`` queued, ``r`` running
in its provider call, ``e`` running after its call ended, ``d`` succeeded. Tasks are named
``<job>.<position>``; every job's created_at is its index in the row, so the order is total.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from imagestudio.domain import ImageStatus
from imagestudio.policy.fairness import QUEUED, Job, Running, Task, head_limits, pick, rescue
from imagestudio.policy.governor import GovernorState

NOW = 100.0
STATES = {
    "q": (ImageStatus.QUEUED, False),
    "r": (ImageStatus.RUNNING, True),
    "e": (ImageStatus.RUNNING, False),
    "d": (ImageStatus.SUCCEEDED, False),
}


@dataclass(frozen=True)
class J:
    name: str
    user: str
    tasks: str
    key: str = "k"
    cap: int | None = None
    serial: bool = False
    cancel: bool = False
    skus: str | None = None  # one letter per task; default: each its own SKU
    started: Mapping[int, float] = field(default_factory=dict)  # default 1.0 if it ran
    due: Mapping[int, float] = field(default_factory=dict)  # run_after; default 0.0
    lease: Mapping[int, float] = field(default_factory=dict)  # lease_expires_at


def build(rows: list[J]) -> tuple[list[Job], list[Task], dict[int, str]]:
    jobs, tasks, names = [], [], {}
    for index, row in enumerate(rows):
        jobs.append(Job(row.name, row.user, float(index), row.key, row.cap, row.serial, row.cancel))
        for position, code in enumerate(row.tasks):
            status, in_call = STATES[code]
            task_id = index * 100 + position
            tasks.append(
                Task(
                    task_id,
                    row.name,
                    position,
                    row.skus[position] if row.skus else str(position),
                    status,
                    run_after=row.due.get(position, 0.0),
                    started_at=row.started.get(position, None if code == "q" else 1.0),
                    in_call=in_call,
                    lease_expires_at=row.lease.get(position),
                )
            )
            names[task_id] = f"{row.name}.{position}"
    return jobs, tasks, names


def gov(window: float = 64, **changes: float) -> GovernorState:
    return GovernorState(window=window, **changes)  # type: ignore[arg-type]


P = pytest.param
CASES = [
    P([J("A", "a", "qqqq"), J("B", "b", "qq")], {}, 10, "A.0 B.0 A.1 B.1 A.2 A.3", id="users"),
    P([J("A", "a", "rrqq"), J("B", "b", "qqq")], {}, 4, "B.0 B.1 B.2 A.2", id="running-last"),
    P(
        [J("A", "a", "dq", started={0: 5}), J("B", "b", "dq", started={0: 3})],
        {},
        2,
        "B.1 A.1",
        id="served-longest-ago",
    ),
    P(
        [J("A", "a", "dq", started={0: 5}), J("B0", "b", "dd", started={0: 9}), J("B", "b", "q")],
        {},
        2,
        "B.0 A.1",
        id="finished-jobs-do-not-count-as-served",
    ),
    P([J("J1", "u", "qqq"), J("J2", "u", "qq")], {}, 9, "J1.0 J2.0 J1.1 J2.1 J1.2", id="jobs"),
    P([J("J1", "u", "rrqq"), J("J2", "u", "qq")], {}, 3, "J2.0 J2.1 J1.2", id="job-running"),
    P([J("A", "a", "rqq", cap=1), J("B", "b", "q")], {}, 5, "B.0", id="cap-reached"),
    P([J("A", "a", "qqqq", cap=3)], {}, 5, "A.0 A.1 A.2", id="cap"),
    P(
        [J("J1", "u", "qqq", cap=1), J("J2", "u", "qq"), J("V", "v", "qqq")],
        {},
        9,
        "J1.0 V.0 J2.0 V.1 J2.1 V.2",
        id="capped-tasks-take-no-turn",
    ),
    P([J("A", "a", "rqq", serial=True, skus="XXY")], {}, 5, "A.2", id="serial-running"),
    P([J("A", "a", "dqq", serial=True, skus="XXY")], {}, 5, "A.1 A.2", id="serial-done"),
    P([J("A", "a", "rqq", skus="XXY")], {}, 5, "A.1 A.2", id="not-serial"),
    P(
        [J("A", "a", "qqq", serial=True, skus="XXY", due={0: 130})],
        {},
        5,
        "A.2",
        id="serial-behind-a-back-off",
    ),
    P([J("A", "a", "qqq", due={1: 100.5})], {}, 5, "A.0 A.2", id="back-off"),
    P([J("A", "a", "qqq", due={1: 100})], {}, 5, "A.0 A.1 A.2", id="back-off-over"),
    P([J("A", "a", "rqqq")], {"k": gov(2)}, 5, "A.1", id="window"),
    P([J("A", "a", "eeqqq")], {"k": gov(2)}, 5, "A.2 A.3", id="ended-calls-free-the-window"),
    P([J("A", "a", "qqqq")], {"k": gov(3.5)}, 5, "A.0 A.1 A.2", id="fractional-window"),
    P([J("A", "a", "qqq")], {"k": gov(3, pinned_window=1)}, 5, "A.0", id="pin-below"),
    P([J("A", "a", "qqq")], {"k": gov(1, pinned_window=3)}, 5, "A.0", id="pin-above"),
    P(
        [J("A", "a", "qqq"), J("B", "b", "qqq"), J("C", "c", "qq", key="k2")],
        {"k": gov(3), "k2": gov(1)},
        9,
        "A.0 B.0 C.0 A.1",
        id="window-in-fair-order",
    ),
    P(
        [J("A", "a", "qq"), J("B", "b", "qq", key="k2")],
        {"k": gov(4, cooldown_until=130), "k2": gov()},
        5,
        "B.0 B.1",
        id="cooldown",
    ),
    P(
        [J("A", "a", "qq")],
        {"k": gov(4, cooldown_until=NOW)},
        5,
        "A.0 A.1",
        id="cooldown-over",
    ),
    P([J("A", "a", "qq", cancel=True), J("B", "b", "q")], {}, 5, "B.0", id="cancel"),
    P([J("A", "a", "rq", lease={0: 99.9})], {}, 5, "A.0 A.1", id="lease-expired"),
    P([J("A", "a", "rq", lease={0: NOW})], {}, 5, "A.1", id="lease-not-expired"),
    P([J("A", "a", "qqq")], {"k": gov(rate=1.0)}, 5, "A.0", id="pace"),
    P([J("A", "a", "qq")], {}, 0, "", id="limit-0"),
    P(  # B's 15th due task comes before A.15 in alice's order: A.15 takes turn 31, not 30
        [
            J("A", "alice", "e" * 14 + "qq"),
            J("B", "alice", "q" * 20, key="k2"),
            J("W", "walt", "e" * 29 + "qq", key="k3"),
        ],
        {"k": gov(200), "k2": gov(200, cooldown_until=130), "k3": gov(200)},
        2,
        "A.14 W.29",
        id="heads-cover-the-users-most-running-job",
    ),
]


@pytest.mark.parametrize(("rows", "governors", "limit", "expected"), CASES)
def test_pick(
    rows: list[J], governors: dict[str, GovernorState], limit: int, expected: str
) -> None:
    jobs, tasks, names = build(rows)
    picked = pick(jobs, tasks, governors, now=NOW, limit=limit, initial_window=64)
    assert [names[i] for i in picked.ids] == expected.split()


@pytest.mark.parametrize(("initial_window", "admitted"), [(4.0, 4), (2.0, 2), (1.5, 1)])
def test_a_key_without_a_governor_row_gets_the_initial_window(
    initial_window: float, admitted: int
) -> None:
    jobs, tasks, _ = build([J("A", "a", "qqqqqq")])
    picked = pick(jobs, tasks, {}, now=NOW, limit=9, initial_window=initial_window)
    assert picked.ids == list(range(admitted))


@pytest.mark.parametrize(
    ("rows", "governors", "wake_at"),
    [
        P([J("A", "a", "q")], {}, None, id="nothing-waits"),
        P([J("A", "a", "qq", due={1: 130})], {"k": gov()}, 130, id="back-off"),
        P(
            [J("A", "a", "qq", due={1: 130})],
            {"k": gov(), "idle": gov(cooldown_until=120)},
            120,
            id="any-key-cooldown",
        ),
        P([J("A", "a", "qq")], {"k": gov(rate=0.5)}, NOW + 1, id="pace-next-slot"),
        P([J("A", "a", "q", due={0: 99})], {"k": gov(cooldown_until=99)}, None, id="all-past"),
    ],
)
def test_wake_at(rows: list[J], governors: dict[str, GovernorState], wake_at: float) -> None:
    jobs, tasks, _ = build(rows)
    assert pick(jobs, tasks, governors, now=NOW, limit=5).wake_at == wake_at


def test_the_claim_reads_limit_times_3_plus_8_candidates_before_pacing() -> None:
    """A paced key holding back its first 11 candidates hides a free key's 12th (limit 1)."""
    rows = [J("P", "p", "q" * 11), J("F", "f", "e" * 11 + "q", key="free")]
    jobs, tasks, names = build(rows)
    paced = {"k": gov(rate=1.0, tat=NOW + 5), "free": gov()}
    assert pick(jobs, tasks, paced, now=NOW, limit=1).ids == []
    assert [names[i] for i in pick(jobs, tasks, paced, now=NOW, limit=2).ids] == ["F.11"]


def test_rescue_requeues_only_expired_leases() -> None:
    _, tasks, _ = build([J("A", "a", "rrq", lease={0: 99, 1: 101})])
    assert [t.status for t in rescue(tasks, NOW)] == ["queued", "running", "queued"]
    assert rescue(tasks, NOW)[0].run_after == NOW


# -- the bounded view against the full ranking ------------------------------------------------
#
# ``full_pick`` is the claim as it was first written: every due task of the queue ranked at
# once (the window functions of the first claim query). ``pick`` ranks only each job's heads
# (``head_limits``). Why they agree, S = scan(limit), F the full fair order, A the tasks F keeps
# within the windows, B those the heads-only order keeps:
# - a task ranked after S in its job (a non-head) is never among A's first S: the S tasks of
#   its job before it share its key and precede it in F, so they are kept whenever it is;
# - a head in B but not in A comes, in F, after a non-head x kept in A; x's S job mates are in
#   A and B and precede it, so it is not among B's first S, and neither is anything after it;
# - every turn a head gets from the heads alone is its full turn: other jobs' tasks past their
#   heads have a job turn above the user's most running + S, above any head's turn.


def full_pick(
    jobs: list[Job], tasks: list[Task], governors: dict[str, GovernorState], now: float, limit: int
) -> list[int]:
    from collections import Counter, defaultdict

    from imagestudio.policy.fairness import ACTIVE, QUEUED, RUNNING, scan
    from imagestudio.policy.pace import apply_pace

    by_id = {j.id: j for j in jobs}
    tasks = rescue(tasks, now)

    def blocked(t: Task) -> bool:
        return any(
            e.job == t.job and e.sku == t.sku and e.position < t.position and e.status in ACTIVE
            for e in tasks
        )

    due = [
        t
        for t in tasks
        if t.status == QUEUED
        and t.run_after <= now
        and not by_id[t.job].cancel_requested
        and not (by_id[t.job].sku_serial and blocked(t))
    ]
    job_running = Counter(t.job for t in tasks if t.status == RUNNING)
    user_running = Counter(by_id[t.job].user for t in tasks if t.status == RUNNING)
    rank: Counter[str] = Counter()
    turns = []
    for t in sorted(due, key=lambda t: (t.job, t.position)):
        rank[t.job] += 1
        turn = job_running[t.job] + rank[t.job]
        cap = by_id[t.job].max_concurrency
        if cap is None or turn <= cap:
            turns.append((t, turn))
    unfinished = {t.job for t in tasks if t.status in ACTIVE}
    served: dict[str, float] = {}
    for t in tasks:
        if t.job in unfinished and t.started_at is not None:
            user = by_id[t.job].user
            served[user] = max(served.get(user, t.started_at), t.started_at)
    urank: Counter[str] = Counter()
    ranked = []
    for t, turn in sorted(
        turns, key=lambda p: (by_id[p[0].job].user, p[1], by_id[p[0].job].created_at, p[0].position)
    ):
        user = by_id[t.job].user
        urank[user] += 1
        s = served.get(user)
        key = (user_running[user] + urank[user], s is not None, s or 0.0, turn)
        ranked.append(((*key, by_id[t.job].created_at, t.position), t))
    ranked.sort(key=lambda p: p[0])
    in_call = Counter(by_id[t.job].provider_key for t in tasks if t.status == RUNNING and t.in_call)
    per_key: dict[str, int] = defaultdict(int)
    kept = []
    for _, t in ranked:
        k = by_id[t.job].provider_key
        state = governors.get(k)
        if state is not None and state.cooldown_until > now:
            continue
        window = 4.0 if state is None else state.effective_window
        per_key[k] += 1
        if in_call[k] + per_key[k] <= window:
            kept.append((t.id, k))
    return apply_pace(kept[: scan(limit)], dict(governors), now, limit).ids


def random_queue(rng: random.Random) -> tuple[list[Job], list[Task], dict[str, GovernorState]]:
    """Jobs of very different running counts sharing users, keys of very different windows."""
    keys = ["k", "k2", "k3"][: rng.randint(1, 3)]
    users = ["a", "b", "c"][: rng.randint(1, 3)]
    jobs, tasks = [], []
    for j in range(rng.randint(1, 6)):
        cap = rng.choice([None, None, None, 1, 3, 15])
        job = Job(f"J{j}", rng.choice(users), float(j), rng.choice(keys), cap, rng.random() < 0.2)
        jobs.append(job)
        codes = rng.choice(["q", "qqqqrred", "qrre", "qqqqqqqd"])
        sku_size = rng.randint(1, 4)
        for p in range(rng.randint(0, 40)):
            status, in_call = STATES[rng.choice(codes)]
            tasks.append(
                Task(
                    j * 100 + p,
                    job.id,
                    p,
                    f"s{p // sku_size}",
                    status,
                    run_after=rng.choice([0.0, 0.0, 0.0, 0.0, 150.0]),
                    started_at=None if status == QUEUED else rng.choice([1.0, 2.0, 3.0]),
                    in_call=in_call,
                )
            )
    windows, rates = [1.0, 3.0, 12.0, 64.0, 200.0], [None, None, None, 1.0]
    governors = {k: gov(rng.choice(windows), rate=rng.choice(rates)) for k in keys}
    return jobs, tasks, governors


@pytest.mark.parametrize("seed", range(4))
def test_the_heads_alone_give_the_full_rankings_answer(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        jobs, tasks, governors = random_queue(rng)
        limit = rng.choice([1, 1, 2, 4])
        expected = full_pick(jobs, tasks, governors, NOW, limit)
        assert pick(jobs, tasks, governors, now=NOW, limit=limit).ids == expected


def test_head_limits_cover_the_users_most_running_job_and_stop_at_the_cap() -> None:
    jobs = [Job("A", "u", 0, "k"), Job("B", "u", 1, "k", max_concurrency=4), Job("C", "v", 2, "k")]
    running = [Running("A", "u", "k", True)] * 5 + [Running("B", "u", "k", True)]
    assert head_limits(jobs, running, 1) == {"A": 11, "B": 3, "C": 11}
