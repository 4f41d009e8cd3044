"""policy.limits: which limit a 429 hit, by what it correlates with; a header's window."""

from __future__ import annotations

import dataclasses

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


@pytest.mark.parametrize(
    ("evidence", "starts", "rate"),
    [
        (Evidence(8, (6, 50, 120)), (7, 49, 110), 6.0),  # a 1-second window of 6
        (Evidence(8, (9, 60, 120)), (8, 61, 110), 6.0),  # a 10-second window of 60
        (Evidence(8, (9, 60, 120)), (8, 59, 121), 2.0),  # only the minute: 120 per minute
        (Evidence(8, (1, 1, 1)), (2, 2, 2), 1.0),  # one a second (at L = 20 s, 20 in flight)
        (Evidence(8, (0, 0, 4)), (0, 0, 5), 4 / 60),  # only the minute covered yet
        (Evidence(8, (6, 50, 120)), (5, 40, 100), None),  # no window over its best
        (Evidence(8), (7, 49, 110), None),
    ],
)
def test_evidence_rate(evidence: Evidence, starts: tuple[int, ...], rate: float | None) -> None:
    from imagestudio.policy.limits import evidence_rate

    assert evidence_rate(evidence, starts) == rate


def test_a_first_rate_429_paces_at_what_the_evidence_shows() -> None:
    before = learned(ok(10, (6, 30, 30)))
    state = observe(before, no(6, (7, 30, 30)), P)
    assert state.rate == pytest.approx(6 * P.rate_hold_share)
    assert state.window == before.window  # the window is not what binds
    assert state.ceiling is None


def test_a_told_rate_429_lifts_a_window_ceiling_that_was_a_guess() -> None:
    # ramping up: the first 429 could be either (both counts past their best): a guess
    state = learned(ok(5, (3, 5, 5)), no(9, (6, 9, 9)))
    assert state.ceiling is not None
    assert not state.ceiling_confirmed
    # later: a 429 with fewer in flight than accepted, more starts in a second: a rate limit
    state = observe(state, ok(8, (5, 20, 20)), P)
    state = observe(state, dataclasses.replace(no(6, (6, 20, 20)), sent_at=T + 1, now=T + 1), P)
    assert state.ceiling is None
    assert state.hold_until == 0.0
    assert state.rate is not None


def test_a_told_concurrency_ceiling_stays_when_the_rate_binds_too() -> None:
    state = learned(ok(6, (9, 20, 20)), no(7, (2, 15, 15)))  # concurrency, told
    assert state.ceiling_confirmed
    ceiling = state.ceiling
    state = observe(state, ok(5, (9, 25, 25)), P)
    state = observe(state, dataclasses.replace(no(4, (10, 25, 25)), sent_at=T + 1, now=T + 1), P)
    assert state.ceiling == ceiling
    assert state.rate == pytest.approx(9 * P.rate_hold_share)


def test_the_pace_has_a_hold_of_its_own() -> None:
    state = dataclasses.replace(initial_state(P), window=30, latency=1.0, rate=10.0)
    state = observe(state, no(10, (11, 30, 30), limit="requests"), P)
    assert state.rate_hold_until > T
    assert state.hold_until == 0.0  # the window is free to grow


def test_a_pace_told_only_on_429s_is_not_grown_between_them() -> None:
    info = RateInfo(limit_requests=6, remaining_requests=0, reset_requests=0.2)
    told = Observation("rate_limited", T, T, rate=info, started_with=8, starts=(7, 50, 50))
    state = observe(dataclasses.replace(initial_state(P), latency=2.0), told, P)
    assert state.rate == pytest.approx(6 * P.header_rate_share)
    for i in range(50):  # successes carry no headers
        state = observe(state, ok(12, (6, 50, 50)), P)
        assert state.rate == pytest.approx(6 * P.header_rate_share), i


def test_early_in_a_run_a_header_limit_reads_per_minute() -> None:
    # 3 s into a run: every window holds all 30 starts; the provider counts 30 of its 240
    info = RateInfo(limit_requests=240, remaining_requests=210, reset_requests=0.25)
    obs = Observation(
        "ok", T - 1, T, latency=1.0, rate=info, started_with=8, starts=(10, 30, 30), called_for=3.0
    )
    state = observe(initial_state(P), obs, P)
    assert state.header_window == 60.0
    assert state.rate == pytest.approx(4 * P.header_rate_share)
