"""Start pacing per provider key (pure): GCRA with no initial burst, and the walk of the
claim's fair order that keeps what each key's cooldown and pace allow."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from imagestudio.policy.governor import GovernorState

PACE_SLACK = 0.5  # share of a pace interval a late start may catch up


@dataclass(frozen=True, slots=True)
class PaceDecision:
    admitted: int
    tat: float
    next_at: float | None  # when the next start would be allowed, if some were held back


def pace(state: GovernorState, now: float, wanted: int) -> PaceDecision:
    """How many of ``wanted`` starts the cooldown and the pace allow now (GCRA, no burst)."""
    if now < state.cooldown_until:
        return PaceDecision(0, state.tat, state.cooldown_until)
    rate = state.effective_rate
    if rate is None or rate <= 0:
        return PaceDecision(wanted, state.tat, None)
    interval = 1 / rate
    # A start that comes a little late (the claim loop wakes, then claims) keeps its slot:
    # up to half an interval is caught up, so lateness does not pile up into a slower pace,
    # and a fresh pacer still admits one start, not a burst.
    tat = max(state.tat, now - interval * PACE_SLACK)
    admitted = 0
    while admitted < wanted and tat <= now + 1e-9:
        admitted += 1
        tat += interval
    return PaceDecision(admitted, tat, tat if admitted < wanted else None)


@dataclass(frozen=True, slots=True)
class Admitted:
    ids: list[int]
    tats: dict[str, float]
    wake_at: float | None


def apply_pace(
    candidates: Sequence[tuple[int, str]],
    states: dict[str, GovernorState],
    now: float,
    limit: int,
) -> Admitted:
    """Walk the fair order and keep what each key's cooldown and pace allow (pure)."""
    ids: list[int] = []
    tats: dict[str, float] = {}
    wake_at: float | None = None
    for image_id, key in candidates:
        if len(ids) >= limit:
            break
        state = states.get(key)
        if state is None:
            ids.append(image_id)
            continue
        decision = pace(dataclasses.replace(state, tat=tats.get(key, state.tat)), now, 1)
        if decision.admitted:
            ids.append(image_id)
            tats[key] = decision.tat
        elif decision.next_at is not None:
            wake_at = decision.next_at if wake_at is None else min(wake_at, decision.next_at)
    return Admitted(ids, tats, wake_at)
