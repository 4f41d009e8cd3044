"""The governor's decisions: a state and an observation give a new state (pure, no I/O)."""

from __future__ import annotations

import dataclasses

import pytest

from imagestudio.domain import LimitKind, RateInfo
from imagestudio.policy.governor import (
    GovernorParams,
    GovernorState,
    Observation,
    initial_state,
    observe,
)
from imagestudio.policy.pace import apply_pace, pace

P = GovernorParams()


def ok(
    state: GovernorState,
    now: float,
    *,
    in_flight: int | None = None,
    latency: float = 1.0,
    rate: RateInfo | None = None,
) -> GovernorState:
    obs = Observation("ok", now - latency, now, latency=latency, in_flight=in_flight, rate=rate)
    return observe(state, obs, P)


def limited(
    state: GovernorState,
    sent_at: float,
    now: float,
    *,
    retry_after: float | None = 0.5,
    in_flight: int | None = None,
    limit: LimitKind | None = None,
) -> GovernorState:
    obs = Observation(
        "rate_limited", sent_at, now, retry_after=retry_after, in_flight=in_flight, limit=limit
    )
    return observe(state, obs, P)


def test_starts_small_and_doubles_per_round_trip_in_slow_start() -> None:
    state = initial_state(P)
    assert state.window == 4
    for _ in range(4):
        state = ok(state, 10.0)
    assert state.window == 8


def test_does_not_grow_a_window_it_does_not_use() -> None:
    state = dataclasses.replace(initial_state(P), window=10)
    assert ok(state, 10.0, in_flight=3).window == 10
    assert ok(state, 10.0, in_flight=10).window == 11


def test_a_429_shrinks_once_per_epoch_and_remembers_the_ceiling() -> None:
    state = dataclasses.replace(initial_state(P), window=12)
    state = limited(state, sent_at=9.9, now=10.0, in_flight=12)
    assert state.window == 8  # floor(12 * 0.7)
    assert state.ceiling == 12
    assert state.epoch == 10.0
    assert state.rate_limited == 1
    # Calls sent before the decrease say nothing new: counted, not acted on.
    again = limited(state, sent_at=9.95, now=10.1)
    assert again.window == 8
    assert again.rate_limited == 2
    # A call sent after it is a new signal.
    assert limited(again, sent_at=10.2, now=10.3).window < 8


def test_the_ceiling_is_the_window_actually_in_use() -> None:
    state = dataclasses.replace(initial_state(P), window=40)
    assert limited(state, 9.0, 10.0, in_flight=9).ceiling == 9


def test_grows_back_under_the_ceiling_then_holds_then_probes() -> None:
    state = dataclasses.replace(initial_state(P), window=10, latency=1.0)
    state = limited(state, 9.9, 10.0, in_flight=10)
    for _ in range(20):
        state = ok(state, 11.0)
    assert state.window == 9  # ceiling - 1, held there
    hold_until = state.hold_until
    assert hold_until >= 10.0 + P.min_hold_seconds
    for _ in range(40):
        state = ok(state, hold_until + 1)
    assert state.window > 9  # the hold is over: probing above the old ceiling, slowly
    assert state.window < 20


def test_a_probe_that_finds_the_same_ceiling_goes_back_just_under_it() -> None:
    state = dataclasses.replace(initial_state(P), window=10, latency=1.0)
    state = limited(state, 9.9, 10.0, in_flight=10, limit="concurrency")
    assert (state.window, state.ceiling) == (7, 10)
    probing = dataclasses.replace(state, window=10.5)  # grown past the ceiling after the hold
    after = limited(probing, 40.0, 40.1, in_flight=10, limit="concurrency")
    assert (after.window, after.ceiling) == (9, 10)  # no multiplicative cut: the limit held
    assert after.hold_until > 40.1
    # Under the ceiling the limit has dropped: the multiplicative cut applies.
    dropped = limited(probing, 40.0, 40.1, in_flight=6, limit="concurrency")
    assert (dropped.window, dropped.ceiling) == (4, 6)


def test_a_429_sets_a_cooldown_for_everyone() -> None:
    state = limited(initial_state(P), 9.0, 10.0, retry_after=2.5)
    assert state.cooldown_until == 12.5
    assert pace(state, 11.0, 3).admitted == 0
    assert pace(state, 11.0, 3).next_at == 12.5
    assert pace(state, 12.6, 3).admitted == 3


def test_backpressure_is_milder_and_keeps_no_ceiling() -> None:
    state = dataclasses.replace(initial_state(P), window=10)
    after = observe(state, Observation("backpressure", 9.0, 10.0), P)
    assert after.window == pytest.approx(8.5)
    assert after.ceiling is None
    # Recovers in slow start straight back to where it was.
    assert ok(after, 11.0).window == pytest.approx(9.5)


def test_latency_brakes_growth_but_does_not_shrink() -> None:
    state = dataclasses.replace(initial_state(P), window=6)
    state = ok(state, 10.0, latency=1.0)
    assert state.window == 7
    slow = ok(state, 20.0, latency=30.0)
    assert slow.window == 7  # calls suddenly far slower than usual: no growth, no shrink
    for step in range(200):  # a lasting change becomes the new usual, and growth resumes
        slow = ok(slow, 30.0 + step, latency=30.0)
    assert slow.window > 7


def test_ordinary_spread_of_latencies_does_not_brake() -> None:
    state = dataclasses.replace(initial_state(P), window=6, ssthresh=4.0)
    latencies = [0.2, 1.8, 0.5, 2.6, 0.3, 1.1, 0.9, 3.0, 0.4, 1.5] * 4  # lognormal-ish
    for step, latency in enumerate(latencies):
        state = ok(state, 10.0 + step, latency=latency)
    assert state.window > 8


def test_rate_limit_headers_set_the_pace_directly() -> None:
    state = ok(initial_state(P), 10.0, rate=RateInfo(limit_requests=120, remaining_requests=50))
    assert state.rate == pytest.approx(2 * P.header_rate_share)
    unlimited = ok(state, 11.0, rate=RateInfo(limit_requests=10_000))
    assert unlimited.rate is None


def test_nothing_remaining_cools_down_until_the_next_slot() -> None:
    info = RateInfo(limit_requests=60, remaining_requests=0, reset_requests=30.0)
    state = ok(initial_state(P), 10.0, rate=info)
    assert state.cooldown_until == pytest.approx(11.0)  # 60 per minute: a slot a second


def test_pins_start_the_key_at_them_and_stay_its_ceilings() -> None:
    state = initial_state(P, window=5, rate=2.0)
    assert state.effective_window == 5  # no slow start: the operator knows the limits
    assert state.effective_rate == 2.0
    grown = dataclasses.replace(state, window=9.0, rate=7.0)
    assert grown.effective_window == 5
    assert grown.effective_rate == 2.0
    for step in range(50):
        state = ok(state, 10.0 + step, in_flight=5)
    assert state.effective_window == 5


def test_pinned_keys_still_back_off_when_the_provider_says_no() -> None:
    state = initial_state(P, window=8, rate=4.0)
    shrunk = limited(state, 9.0, 10.0, in_flight=8, limit="concurrency")
    assert shrunk.effective_window == 5  # floor(8 * 0.7): the limit dropped under the pin
    slowed = limited(state, 9.0, 10.0, in_flight=3, limit="requests")
    assert slowed.effective_rate == pytest.approx(4.0 * P.rate_decrease)
    assert slowed.effective_window == 8


def test_a_first_request_rate_429_paces_at_half_the_estimated_start_rate() -> None:
    state = dataclasses.replace(initial_state(P), window=12, latency=1.0)
    state = limited(state, 9.9, 10.0, in_flight=10, limit="requests")
    assert state.window == 12  # the window is not what the provider limits
    # 10 in flight / 1 s = 10 starts a second, of which a bursting limit may allow half.
    assert state.rate == pytest.approx(10.0 * P.first_rate_share)
    assert state.rate_ceiling is None
    assert state.epoch == 10.0
    # A second one for a call sent before the decrease is only counted.
    assert limited(state, 9.95, 10.1, in_flight=9, limit="requests").rate == state.rate
    # One sent after it: the pace in force drew it, so it is the ceiling.
    again = limited(state, 10.2, 10.3, in_flight=9, limit="requests")
    assert again.rate_ceiling == pytest.approx(5.0)
    assert again.rate == pytest.approx(5.0 * P.rate_decrease)


def test_a_first_pace_grows_until_a_429_sets_its_ceiling() -> None:
    state = dataclasses.replace(initial_state(P), window=30, latency=1.0, rate=5.0)
    for _ in range(10):  # about two round trips at 5 a second
        state = ok(state, 11.0, in_flight=6)
    assert 5.9 < state.rate < 6.3  # 10% a round trip


def test_without_a_message_a_429_under_the_ceiling_is_a_rate_limit() -> None:
    state = dataclasses.replace(initial_state(P), window=10, latency=1.0)
    state = limited(state, 9.9, 10.0, in_flight=10)  # first one: taken as concurrency
    assert (state.window, state.ceiling, state.rate) == (7, 10, None)
    state = limited(state, 10.5, 10.6, in_flight=7)  # fewer in flight than before: a rate
    assert state.window == 7
    assert state.rate == pytest.approx(7 * P.first_rate_share)


def test_a_learned_pace_regains_holds_then_probes() -> None:
    state = dataclasses.replace(initial_state(P), window=30, latency=1.0, rate=10.0)
    state = limited(state, 9.9, 10.0, in_flight=10, limit="requests")
    assert state.rate == pytest.approx(10.0 * P.rate_decrease)
    for _ in range(30):
        state = ok(state, 11.0, in_flight=9)
    assert state.rate == pytest.approx(10.0 * P.rate_hold_share)  # regained, held under
    for _ in range(100):
        state = ok(state, state.rate_hold_until + 1, in_flight=10)
    assert 10.0 < state.rate < 11.0  # the hold is over: probing above, slowly


def test_a_pace_that_holds_nothing_back_is_not_grown() -> None:
    state = dataclasses.replace(initial_state(P), window=30, latency=1.0)
    state = limited(state, 9.9, 10.0, in_flight=10, limit="requests")
    assert ok(state, 11.0, in_flight=2).rate == state.rate


def test_headers_replace_a_learned_pace() -> None:
    state = dataclasses.replace(initial_state(P), window=30, latency=1.0)
    state = limited(state, 9.9, 10.0, in_flight=10, limit="requests")
    state = ok(state, 11.0, rate=RateInfo(limit_requests=120))
    assert state.rate == pytest.approx(2 * P.header_rate_share)
    assert state.rate_ceiling is None


def test_pace_has_no_initial_burst() -> None:
    state = dataclasses.replace(initial_state(P), rate=4.0)
    first = pace(state, 100.0, 10)
    assert first.admitted == 1
    assert first.next_at == pytest.approx(100.125)  # half an interval of slack, no more
    later = pace(dataclasses.replace(state, tat=first.tat), 100.125, 10)
    assert later.admitted == 1
    assert later.tat == pytest.approx(100.375)


def test_a_late_start_does_not_slow_the_pace() -> None:
    state = dataclasses.replace(initial_state(P), rate=4.0, tat=100.25)
    late = pace(state, 100.30, 10)  # the claim came 50 ms after the slot
    assert late.admitted == 1
    assert late.tat == pytest.approx(100.5)  # the next slot is where it was due
    very_late = pace(state, 101.0, 10)  # idle for a while: no burst to catch up
    assert very_late.admitted == 1


def test_apply_pace_walks_the_fair_order_per_key() -> None:
    paced = dataclasses.replace(initial_state(P), rate=1.0)
    free = initial_state(P)
    candidates = [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "b")]
    result = apply_pace(candidates, {"a": paced, "b": free}, now=50.0, limit=4)
    assert result.ids == [1, 3, 5]
    assert result.tats["a"] == pytest.approx(50.5)
    assert result.wake_at == pytest.approx(50.5)
