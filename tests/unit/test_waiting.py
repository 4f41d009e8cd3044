"""``policy.waiting.explain``: the reason words for queued images, as a table over views the
claim's own reference (``fairness.view_of``) builds from plain tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from imagestudio.domain import ImageStatus
from imagestudio.policy import fairness
from imagestudio.policy.governor import GovernorState
from imagestudio.policy.waiting import Queued, Reason, clock_text, explain

NOW = 1_000_000.0
KEY = "k1"
RUNNING = ImageStatus.RUNNING


def job(
    id: str = "a", user: str = "u1", created: float = 1.0, key: str = KEY, **kw: object
) -> fairness.Job:
    return fairness.Job(id, user, created, key, **kw)  # type: ignore[arg-type]


def queued(id: int, job_id: str = "a", position: int | None = None, **kw: object) -> fairness.Task:
    pos = id if position is None else position
    return fairness.Task(id, job_id, pos, f"S{pos}", **kw)  # type: ignore[arg-type]


def running(id: int, job_id: str = "a", in_call: bool = True) -> fairness.Task:
    return fairness.Task(
        id, job_id, id, f"S{id}", status=RUNNING, started_at=NOW - 1, in_call=in_call
    )


@dataclass
class Case:
    name: str
    jobs: Sequence[fairness.Job]
    tasks: Sequence[fairness.Task]
    ask: Queued
    kind: str
    text: str
    governors: dict[str, GovernorState] = field(default_factory=dict)
    limit: int = 4


def gov(**kw: object) -> dict[str, GovernorState]:
    return {KEY: GovernorState(**{"window": 4.0, **kw})}  # type: ignore[arg-type]


CASES = [
    Case("free key: next", [job()], [queued(1)], Queued(1, 1, 0), "next", "next: starts"),
    Case(
        "window full",
        [job()],
        [running(1), running(2), queued(3)],
        Queued(3, 3, 0),
        "window",
        "waiting for the key's window (2/2 in flight)",
        gov(window=2.0),
    ),
    Case(
        "window counts calls in flight only",
        [job()],
        [running(1), running(2, in_call=False), queued(3)],
        Queued(3, 3, 0),
        "next",
        "next:",
        gov(window=2.0),
    ),
    Case(
        "fractional window floors",
        [job()],
        [running(1), running(2), queued(3)],
        Queued(3, 3, 0),
        "window",
        "(2/2 in flight)",
        gov(window=2.9),
    ),
    Case(
        "cooldown after a 429",
        [job()],
        [queued(1)],
        Queued(1, 1, 0),
        "cooldown",
        f"cooldown after a 429 until {clock_text(NOW + 30)}",
        gov(cooldown_until=NOW + 30),
    ),
    Case(
        "retry back-off",
        [job()],
        [queued(1, run_after=NOW + 5)],
        Queued(1, 1, NOW + 5, error_kind="ProviderError"),
        "backoff",
        f"retry back-off until {clock_text(NOW + 5)} (after ProviderError)",
    ),
    Case(
        "429 snooze",
        [job()],
        [queued(1, run_after=NOW + 5)],
        Queued(1, 1, NOW + 5, error_kind="RateLimited"),
        "rate_limited",
        f"rate limited (429): retry at {clock_text(NOW + 5)}",
    ),
    Case(
        "per-job cap",
        [job(max_concurrency=2)],
        [running(1), running(2), queued(3)],
        Queued(3, 3, 0),
        "job_cap",
        "per-job cap: 2/2 running",
    ),
    Case(
        "cap with room for an earlier image only",
        [job(max_concurrency=2)],
        [running(1), queued(2), queued(3)],
        Queued(3, 3, 0, ahead_in_job=1),
        "job_cap",
        "per-job cap: 1/2 running; 1 earlier image first",
    ),
    Case(
        "cap with room",
        [job(max_concurrency=3)],
        [running(1), running(2), queued(3)],
        Queued(3, 3, 0),
        "next",
        "next:",
    ),
    Case(
        "SKU serial",
        [job(sku_serial=True)],
        [running(1), queued(2)],
        Queued(2, 2, 0, blocker="stem1"),
        "sku_serial",
        "SKU serial: waiting for stem1",
    ),
    Case(
        "paced",
        [job()],
        [queued(1), queued(2)],
        Queued(2, 2, 0),
        "paced",
        "paced: next start in 1.0 s",
        gov(rate=1.0, tat=NOW),
    ),
    Case(
        "fair share: another user's turn first",
        [job("a", "u1", 1.0), job("b", "u2", 2.0)],
        [running(1, "a"), queued(2, "a"), queued(10, "b")],
        Queued(2, 2, 0),
        "fair_share",
        "fair share: 1 other user ahead",
        gov(window=3.0),
        1,
    ),
    Case(
        "window full, others ahead",
        [job("a", "u1", 1.0), job("b", "u2", 2.0), job("c", "u3", 3.0)],
        [running(1, "a"), queued(2, "a"), queued(10, "b"), queued(20, "c")],
        Queued(2, 2, 0),
        "window",
        "waiting for the key's window (1/1 in flight); 2 other users ahead",
        gov(window=1.0),
    ),
    Case(
        "behind the heads: the job's earlier images first",
        [job()],
        [queued(i) for i in range(1, 40)],
        Queued(39, 39, 0, ahead_in_job=38),
        "in_line",
        "in line: 38 earlier images of this job first",
        limit=1,
    ),
    Case(
        "cancelling",
        [job(cancel_requested=True)],
        [queued(1)],
        Queued(1, 1, 0),
        "cancelling",
        "cancelling",
    ),
    Case(
        "another key's full window does not hold this one",
        [job("a", "u1", 1.0), job("b", "u2", 2.0, key="k2")],
        [running(1, "b"), running(2, "b"), queued(3, "a")],
        Queued(3, 3, 0),
        "next",
        "next:",
        {"k2": GovernorState(window=2.0)},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reasons(case: Case) -> None:
    view = fairness.view_of(case.jobs, case.tasks, now=NOW, limit=case.limit)
    owner = next(
        j for j in case.jobs if j.id == next(t.job for t in case.tasks if t.id == case.ask.id)
    )
    found = explain(owner, [case.ask], view, case.governors, now=NOW, limit=case.limit)
    reason = found[case.ask.id]
    assert reason.kind == case.kind, reason
    assert case.text in reason.text, reason


def test_agrees_with_the_claim_on_random_queues() -> None:
    """Whatever ``explain`` calls ``next`` is exactly what ``fairness.pick`` would lease."""
    import random

    rng = random.Random(7)
    for _ in range(200):
        jobs = [job(f"j{i}", f"u{i % 3}", float(i), key=f"k{i % 2}") for i in range(4)]
        tasks: list[fairness.Task] = []
        for n in range(rng.randint(1, 30)):
            j = rng.choice(jobs)
            if rng.random() < 0.3:
                tasks.append(
                    fairness.Task(n, j.id, n, "S", status=RUNNING, in_call=rng.random() < 0.7)
                )
            else:
                tasks.append(fairness.Task(n, j.id, n, "S"))
        govs = {k: GovernorState(window=float(rng.randint(1, 4))) for k in ("k0", "k1")}
        limit = rng.randint(1, 6)
        picked = set(fairness.pick(jobs, tasks, govs, now=NOW, limit=limit).ids)
        view = fairness.view_of(jobs, tasks, now=NOW, limit=limit)
        nexts: set[int] = set()
        for j in jobs:
            asks = [
                Queued(t.id, t.position, 0) for t in tasks if t.job == j.id and t.status != RUNNING
            ]
            found: dict[int, Reason] = explain(j, asks, view, govs, now=NOW, limit=limit)
            nexts |= {i for i, r in found.items() if r.kind == "next"}
        assert nexts == picked
