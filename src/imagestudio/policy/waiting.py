"""Why is this image waiting? Pure: the words for each queued image, from the same admission
logic the claim applies (``policy.fairness``, ``policy.pace``) over the same bounded view.

A queued image is held back by the first of these that applies, in this order:

1. ``cancelling``: its job is being cancelled;
2. ``rate_limited`` / ``backoff`` / ``scheduled``: it is not due yet (``run_after`` in the
   future): a 429 snooze, a retry back-off after an error, or simply later;
3. ``sku_serial``: a ``sku_serial`` job with an earlier image of its SKU queued or running;
4. ``job_cap``: its job has ``max_concurrency`` tasks running already, or the room the cap
   leaves goes to the job's earlier queued images;
5. ``in_line``: it is not one of its job's heads (the claim looks at each job's first few due
   images only): the earlier images of its job go first;
6. ``cooldown``: the provider key is cooling down after a 429 (``retry-after``);
7. ``window``: the key's window is full (its calls in flight reach the learned window);
8. ``fair_share`` / ``in_line``: the window has room, but tasks ranked before it in fair order
   take that room first: other users' (their turn) or its own job's;
9. ``paced``: it is a candidate within the window, but the key's start pace holds it back;
10. ``next``: a claim now would start it (a worker slot frees, or the next poll).

``explain`` answers for the queued images of one job; the store reads the view (the claim's
``read_view``), each image's SKU blocker and how many of its job's queued images come first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from imagestudio.policy import fairness
from imagestudio.policy.governor import GovernorState
from imagestudio.policy.pace import apply_pace, pace

RATE_LIMITED_KIND = "RateLimited"  # the error kind a 429 leaves on the image (policy.retry)


@dataclass(frozen=True, slots=True)
class Queued:
    """One queued image to explain."""

    id: int
    position: int
    run_after: float  # epoch seconds
    error_kind: str | None = None  # what the last attempt ended with, if it was requeued
    blocker: str | None = None  # sku_serial: the stem of the earlier image of its SKU in play
    ahead_in_job: int = 0  # the job's queued images at earlier positions


@dataclass(frozen=True, slots=True)
class Reason:
    kind: str
    text: str
    until: float | None = None  # epoch seconds, when the reason says when it ends


def clock_text(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S UTC")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True, slots=True)
class _KeyView:
    """What the claim sees of the job's provider key."""

    key: str
    state: GovernorState | None
    window: float
    in_call: int
    order: list[tuple[int, fairness.Job]]  # the key's heads in fair order
    admitted: set[int]
    held: dict[int, float]  # candidate -> when its pace slot comes


def explain(
    job: fairness.Job,
    queued: Sequence[Queued],
    view: fairness.View,
    governors: Mapping[str, GovernorState],
    *,
    now: float,
    limit: int,
    initial_window: float = 4.0,
) -> dict[int, Reason]:
    """Why each of ``queued`` (images of ``job``) has not started, by image id."""
    key = _key_view(job, view, governors, now=now, limit=limit, initial_window=initial_window)
    running = sum(1 for r in view.running if r.job == job.id)
    return {q.id: _reason(job, q, key, running, now) for q in queued}


def _key_view(
    job: fairness.Job,
    view: fairness.View,
    governors: Mapping[str, GovernorState],
    *,
    now: float,
    limit: int,
    initial_window: float,
) -> _KeyView:
    key = job.provider_key
    state = governors.get(key)
    window = initial_window if state is None else state.effective_window
    in_call = sum(1 for r in view.running if r.key == key and r.in_call)
    order = [
        (task, j)
        for task, j in fairness.fair_order(view, fairness.scan(limit))
        if j.provider_key == key
    ]
    found = fairness.candidates(
        view, governors, now=now, limit=limit, initial_window=initial_window
    )
    paced = apply_pace(found, dict(governors), now, limit)
    return _KeyView(
        key, state, window, in_call, order, set(paced.ids), _held(found, governors, key, now, limit)
    )


def _held(
    found: Sequence[tuple[int, str]],
    governors: Mapping[str, GovernorState],
    key: str,
    now: float,
    limit: int,
) -> dict[int, float]:
    """``apply_pace``'s walk again, keeping the candidates of ``key`` its pace holds back and
    when the key's next start is allowed."""
    taken = 0
    tats: dict[str, float] = {}
    held: dict[int, float] = {}
    for task, k in found:
        if taken >= limit:
            break
        state = governors.get(k)
        if state is None:
            taken += 1
            continue
        decision = pace(dataclasses.replace(state, tat=tats.get(k, state.tat)), now, 1)
        if decision.admitted:
            taken += 1
            tats[k] = decision.tat
        elif k == key and decision.next_at is not None:
            held[task] = decision.next_at
    return held


def _reason(job: fairness.Job, q: Queued, key: _KeyView, running: int, now: float) -> Reason:
    if job.cancel_requested:
        return Reason("cancelling", "cancelling: the job is being cancelled")
    if q.run_after > now:
        return _not_due(q)
    if q.blocker is not None:
        return Reason("sku_serial", f"SKU serial: waiting for {q.blocker}")
    cap = job.max_concurrency
    if cap is not None and running >= cap:
        return Reason("job_cap", f"per-job cap: {running}/{cap} running")
    ranked = [task for task, _ in key.order]
    if q.id not in ranked:
        if cap is not None and running + q.ahead_in_job >= cap:
            ahead = _plural(q.ahead_in_job, "earlier image")
            return Reason("job_cap", f"per-job cap: {running}/{cap} running; {ahead} first")
        return _behind_heads(job, q, key, now)
    if key.state is not None and key.state.cooldown_until > now:
        until = key.state.cooldown_until
        return Reason("cooldown", f"cooldown after a 429 until {clock_text(until)}", until)
    if key.in_call >= int(key.window):
        return Reason("window", _window_text(key) + _others_ahead(job, q.id, key))
    if q.id in key.held:
        at = key.held[q.id]
        return Reason("paced", f"paced: next start in {max(0.0, at - now):.1f} s", at)
    if q.id in key.admitted:
        return Reason("next", "next: starts as soon as a worker slot is free")
    return _ahead(job, q.id, key)


def _not_due(q: Queued) -> Reason:
    at = clock_text(q.run_after)
    if q.error_kind == RATE_LIMITED_KIND:
        return Reason("rate_limited", f"rate limited (429): retry at {at}", q.run_after)
    if q.error_kind:
        return Reason("backoff", f"retry back-off until {at} (after {q.error_kind})", q.run_after)
    return Reason("scheduled", f"scheduled for {at}", q.run_after)


def _window_text(key: _KeyView) -> str:
    return f"waiting for the key's window ({key.in_call}/{int(key.window)} in flight)"


def _others_ahead(job: fairness.Job, task: int, key: _KeyView) -> str:
    users = _users_before(job, task, key)
    return f"; {_plural(users, 'other user')} ahead" if users else ""


def _users_before(job: fairness.Job, task: int, key: _KeyView) -> int:
    before: set[str] = set()
    for found, j in key.order:
        if found == task:
            break
        if j.user != job.user:
            before.add(j.user)
    return len(before)


def _ahead(job: fairness.Job, task: int, key: _KeyView) -> Reason:
    """Within the window's room, but others ranked before it take that room first."""
    users = _users_before(job, task, key)
    if users:
        return Reason("fair_share", f"fair share: {_plural(users, 'other user')} ahead")
    ahead = [found for found, _ in key.order].index(task)
    return Reason("in_line", f"in line: {_plural(ahead, 'image')} ahead on this key")


def _behind_heads(job: fairness.Job, q: Queued, key: _KeyView, now: float) -> Reason:
    """Not among its job's heads: the job's earlier queued images go first."""
    text = f"in line: {_plural(q.ahead_in_job, 'earlier image')} of this job first"
    others = {j.user for _, j in key.order if j.user != job.user}
    if others:
        text += f"; sharing the key with {_plural(len(others), 'other user')}"
    if key.state is not None and key.state.cooldown_until > now:
        text += f"; key cooling down until {clock_text(key.state.cooldown_until)}"
    elif key.in_call >= int(key.window):
        text += f"; {_window_text(key).removeprefix('waiting for ')}"
    return Reason("in_line", text)
