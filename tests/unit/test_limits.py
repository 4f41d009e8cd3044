"""policy.limits: which limit a 429 hit, by what it correlates with; a header's window."""

from __future__ import annotations

import pytest

from imagestudio.domain import RateInfo
from imagestudio.policy.governor import (
    GovernorParams,
    GovernorState,
    Observation,
    initial_state,
    limit_hit,
    observe,
)
from imagestudio.policy.limits import Evidence, accepted, classify, header_window

E = Evidence(in_flight=8, starts=(5, 40, 200))


@pytest.mark.parametrize(
    ("evidence", "started_with", "starts", "expected"),
    [
        # more in flight than ever accepted, starts as usual: a concurrency limit
        (E, 9, (4, 38, 190), "concurrency"),
        # fewer in flight than an accepted call had, a window over its best: a rate limit
        (E, 5, (6, 40, 200), "requests"),
        (E, 5, (3, 30, 201), "requests"),  # any window may be the provider's
        # both explain it (ramping up): not told
        (E, 9, (6, 41, 201), None),
        # neither (the limits moved under us): not told
        (E, 7, (5, 40, 200), None),
        # no evidence yet, or no counts from the caller: not told
        (Evidence(), 9, (6, 41, 201), None),
        (E, None, None, None),
        (Evidence(in_flight=8), 9, (1, 1, 1), None),
    ],
)
def test_classify(
    evidence: Evidence,
    started_with: int | None,
    starts: tuple[int, ...] | None,
    expected: str | None,
) -> None:
    assert classify(evidence, started_with, starts) == expected


@pytest.mark.parametrize(
    ("before", "started_with", "starts", "after"),
    [
        (Evidence(), 3, (1, 2, 3), Evidence(3, (1.0, 2.0, 3.0))),
        (E, 3, (9, 2, 3), Evidence(8, (9.0, 40.0, 200.0))),
        (E, 12, None, Evidence(12, (5, 40, 200))),
        (E, None, None, E),
    ],
)
def test_accepted_keeps_the_most(
    before: Evidence, started_with: int | None, starts: tuple[int, ...] | None, after: Evidence
) -> None:
    assert accepted(before, started_with, starts) == after


@pytest.mark.parametrize(
    ("limit", "remaining", "starts", "window"),
    [
        (24, 0, (25, 230, 900), 1.0),  # a 1-second window, headers only on its 429s
        (240, 10, (24, 229, 1000), 10.0),  # a 10-second window
        (500, 300, (4, 35, 199), 60.0),  # OpenAI's per minute
        (100, 99, (1, 1, 1), 60.0),  # one start so far: the cautious reading, a minute
        (100, 90, (10, 10, 10), 60.0),  # all windows alike: still a minute
        (None, 0, (1, 2, 3), None),
        (24, None, (1, 2, 3), None),
        (24, 0, None, None),
        (24, 0, (0, 0, 0), None),
    ],
)
def test_header_window(
    limit: int | None, remaining: int | None, starts: tuple[int, ...] | None, window: float | None
) -> None:
    assert header_window(limit, remaining, starts) == window


P = GovernorParams()
T = 1_000.0


def ok(started_with: int, starts: tuple[int, ...], rate: RateInfo | None = None) -> Observation:
    return Observation(
        "ok",
        T - 1,
        T,
        latency=1.0,
        rate=rate,
        started_with=started_with,
        starts=starts,
        in_flight=started_with,
    )


def no(started_with: int, starts: tuple[int, ...], limit: str | None = None) -> Observation:
    return Observation(
        "rate_limited",
        T,
        T,
        started_with=started_with,
        starts=starts,
        in_flight=started_with,
        limit=limit,  # type: ignore[arg-type]
    )


def learned(*observations: Observation) -> GovernorState:
    state = initial_state(P)
    for obs in observations:
        state = observe(state, obs, P)
    return state


def test_a_429_with_fewer_in_flight_than_accepted_is_a_rate_limit_whatever_it_says() -> None:
    state = learned(ok(10, (3, 20, 20)))
    assert limit_hit(state, no(6, (4, 20, 20), limit="concurrency")) == "requests"


def test_a_429_past_the_most_in_flight_with_usual_starts_is_concurrency_whatever_it_says() -> None:
    state = learned(ok(6, (9, 20, 20)))
    assert limit_hit(state, no(7, (2, 15, 15), limit="requests")) == "concurrency"


def test_when_the_evidence_does_not_tell_the_headers_then_the_words_decide() -> None:
    state = learned(ok(6, (3, 20, 20)))
    both = no(7, (4, 21, 21))
    assert limit_hit(state, both) == "concurrency"  # no ceiling yet: the old rule
    exhausted = Observation(
        "rate_limited",
        T,
        T,
        started_with=7,
        starts=(4, 21, 21),
        rate=RateInfo(limit_requests=None, remaining_requests=0, reset_requests=1.0),
    )
    assert limit_hit(state, exhausted) == "requests"
    assert limit_hit(state, no(7, (4, 21, 21), limit="requests")) == "requests"


def test_a_window_decrease_clears_the_in_flight_evidence_a_pace_decrease_the_starts() -> None:
    state = learned(ok(6, (3, 20, 20)), no(7, (2, 19, 19)))  # concurrency
    assert state.ok_in_flight is None
    assert state.ok_starts_1 == 3
    state = learned(ok(10, (3, 20, 20)), no(6, (4, 20, 20)))  # a rate limit: a first pace
    assert state.ok_in_flight == 10
    assert state.ok_starts_1 is None


def test_header_limits_are_paced_per_the_window_they_match() -> None:
    # 24 per 1-second window, told only on a 429: 24/s, not 24/min
    info = RateInfo(limit_requests=24, remaining_requests=0, reset_requests=0.3)
    state = observe(
        initial_state(P),
        Observation("rate_limited", T, T, rate=info, started_with=12, starts=(25, 200, 600)),
        P,
    )
    assert state.header_window == 1.0
    assert state.rate == pytest.approx(24 * P.header_rate_share)
    # OpenAI's per minute, told on every answer
    info = RateInfo(limit_requests=500, remaining_requests=320, reset_requests=0.12)
    state = observe(initial_state(P), ok(8, (3, 30, 179), info), P)
    assert state.header_window == 60.0
    assert state.rate == pytest.approx(500 / 60 * P.header_rate_share)
    # no counts to check against: the last window found, else a minute
    info = RateInfo(limit_requests=600, remaining_requests=500, reset_requests=1.0)
    later = observe(
        GovernorState(window=4, header_window=10.0),
        Observation("ok", T - 1, T, latency=1.0, rate=info),
        P,
    )
    assert later.rate == pytest.approx(60 * P.header_rate_share)
