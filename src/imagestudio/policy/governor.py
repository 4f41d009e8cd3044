"""The provider governor: how many calls one provider key may have in flight, and how fast
they may start. Pure: a state plus an observation gives a new state; the store keeps the
state in the database (one row per provider key), so every worker on every machine obeys
the same numbers, and the claim applies it.

Three controls (docs/governor.md):

- **Window W**, counted as the key's running tasks whose provider call has not ended (the
  rest of a task, post-processing and storing, holds no slot). It starts small (or where
  the key's last run left it), grows by one per success below the slow-start threshold
  (doubling per round trip) and by ``1/W`` above it (one per round trip). A 429 shrinks it
  multiplicatively, at most once per *epoch*: a 429 for a call sent before the last decrease
  says nothing new and is ignored. The window that drew the 429 is remembered as the
  *ceiling*; W grows back quickly to just under it and may probe above it only after a hold
  of ``hold_round_trips`` round trips. 5xx and timeouts are back-pressure: a milder decrease,
  once per epoch. Latency brakes growth (no growth while calls take much longer than the
  key's usual), but is never the main signal: image calls are slow because of the prompt.
- **Pace**: a start-rate limit (GCRA, no initial burst). When the provider sends
  ``x-ratelimit-limit-requests`` (per minute), starts are paced just under it directly.
  Without headers, a 429 that comes from a *request-rate* limit (the provider's message says
  so, or it came with fewer calls in flight than the window's ceiling) sets a learned pace
  instead of shrinking W: the start rate that drew it times ``rate_decrease``, regained
  quickly to just under that rate, held there, then probed above after the hold. A narrower
  window would not help there: with prompt-driven latencies, a window that fits the rate on
  average still bursts over it whenever a few short calls end together.
- **Cooldown**: when the provider says when to come back (``retry-after``, or nothing
  remaining until the reset), nobody starts a call for that key before then.

Operators may pin ``window`` and ``rate`` per key: a pinned key starts there (no slow start),
never goes above the pins, and still backs off when the provider says no. The default is
adaptive.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from imagestudio.domain import LimitKind, RateInfo
from imagestudio.policy.limits import (
    Evidence,
    accepted,
    classify,
    covered,
    evidence_rate,
    header_window,
)

UNLIMITED_REQUESTS = 10_000  # a per-minute limit this high is no limit worth pacing to


@dataclass(frozen=True, slots=True)
class GovernorParams:
    initial_window: float = 4.0
    min_window: float = 1.0
    max_window: float = 256.0
    decrease: float = 0.7
    backpressure_decrease: float = 0.85
    hold_round_trips: float = 20.0
    min_hold_seconds: float = 5.0
    latency_alpha: float = 0.2
    brake_ratio: float = 3.0
    header_rate_share: float = 0.97
    rate_decrease: float = 0.8
    rate_hold_share: float = 0.95
    rate_recover: float = 0.1
    rate_probe: float = 0.01
    first_rate_share: float = 0.5
    pace_in_use: float = 0.75


@dataclass(frozen=True, slots=True)
class GovernorState:
    window: float
    ssthresh: float | None = None
    ceiling: float | None = None
    hold_until: float = 0.0  # the window's hold
    epoch: float = 0.0
    cooldown_until: float = 0.0
    rate: float | None = None  # starts per second; None = not paced
    rate_ceiling: float | None = None  # the learned pace that drew the last request-rate 429
    tat: float = 0.0  # GCRA theoretical arrival time of the next start
    latency: float | None = None
    base_latency: float | None = None
    rate_limited: int = 0
    pinned_window: float | None = None
    pinned_rate: float | None = None
    cooldown_cause: str | None = None  # what set ``cooldown_until``, for the job's answer
    # What tells a concurrency limit from a rate limit (policy.limits.Evidence): the most
    # calls in flight, and the most starts in the last 1, 10 and 60 s, that a call was
    # accepted with since the last decrease; and the window a header's limit is per.
    ok_in_flight: float | None = None
    ok_starts_1: float | None = None
    ok_starts_10: float | None = None
    ok_starts_60: float | None = None
    header_window: float | None = None
    rate_hold_until: float = 0.0  # the pace's hold (apart from the window's)
    ceiling_confirmed: bool = False  # the window's ceiling came from a 429 the evidence told

    @property
    def evidence(self) -> Evidence:
        starts = (self.ok_starts_1, self.ok_starts_10, self.ok_starts_60)
        return Evidence(
            in_flight=self.ok_in_flight,
            starts=None if any(s is None for s in starts) else tuple(float(s or 0) for s in starts),
        )

    @property
    def effective_window(self) -> float:
        return _at_most(self.window, self.pinned_window)

    @property
    def effective_rate(self) -> float | None:
        if self.rate is None:
            return self.pinned_rate
        return _at_most(self.rate, self.pinned_rate)


def _at_most(value: float, cap: float | None) -> float:
    return value if cap is None else min(value, cap)


def initial_state(
    params: GovernorParams, *, window: float | None = None, rate: float | None = None
) -> GovernorState:
    """A new key's state. ``window``/``rate`` pin it (operators who know the limits): it
    starts at the pins instead of small, and they stay its ceilings."""
    return GovernorState(
        window=params.initial_window if window is None else window,
        pinned_window=window,
        pinned_rate=rate,
    )


@dataclass(frozen=True, slots=True)
class Observation:
    """What one finished provider call tells the governor."""

    kind: Literal["ok", "rate_limited", "backpressure"]
    sent_at: float
    now: float
    latency: float | None = None
    retry_after: float | None = None
    rate: RateInfo | None = None
    in_flight: int | None = None  # the key's running tasks when the call ended, this one too
    limit: LimitKind | None = None  # which limit a 429 says it hit, when it says
    wait_cause: str | None = None  # the header ``retry_after`` came from
    # This process's calls of the key in flight when the call started (itself included), and
    # its starts of the key in the 1, 10 and 60 s before (itself included): policy.limits.
    started_with: int | None = None
    starts: tuple[int, ...] | None = None
    called_for: float | None = None  # seconds this process has been calling the key

    @property
    def covered_starts(self) -> tuple[int, ...] | None:
        """``starts`` of the windows the process has called the key for (policy.limits)."""
        return covered(self.starts, self.called_for)


def observe(state: GovernorState, obs: Observation, params: GovernorParams) -> GovernorState:
    """The new state after ``obs``."""
    state = _from_headers(state, obs, params)
    if obs.kind == "ok":
        return _on_success(state, obs, params)
    if obs.kind == "rate_limited":
        return _on_rate_limited(state, obs, params)
    return _on_backpressure(state, obs, params)


def _from_headers(state: GovernorState, obs: Observation, params: GovernorParams) -> GovernorState:
    info = obs.rate
    if info is None:
        return state
    rate, learned, window = state.rate, state.rate_ceiling, state.header_window
    if info.limit_requests is not None:
        # The limit is per a window the header does not name: the one whose count of our
        # starts matches the provider's (policy.limits.header_window), else the last one
        # found, else a minute (the most cautious reading).
        found = header_window(info.limit_requests, info.remaining_requests, obs.starts)
        window = found or window or 60.0
        per_window = info.limit_requests * 60 / window  # per minute
        rate = (
            None if per_window >= UNLIMITED_REQUESTS else per_window / 60 * params.header_rate_share
        )
        learned = None  # the provider said it: nothing to learn
    cooldown, cause = state.cooldown_until, state.cooldown_cause
    if info.remaining_requests == 0 and info.reset_requests is not None:
        span = window or 60.0
        next_slot = span / info.limit_requests if info.limit_requests else info.reset_requests
        until = obs.now + min(info.reset_requests, next_slot)
        if until > cooldown:
            cooldown = until
            cause = f"no requests remaining; reset in {min(info.reset_requests, next_slot):g} s"
    return dataclasses.replace(
        state,
        rate=rate,
        rate_ceiling=learned,
        header_window=window,
        cooldown_until=cooldown,
        cooldown_cause=cause,
    )


def _on_success(state: GovernorState, obs: Observation, params: GovernorParams) -> GovernorState:
    latency, base = _latencies(state, obs, params)
    state = _with_evidence(
        dataclasses.replace(state, latency=latency, base_latency=base),
        accepted(state.evidence, obs.started_with, obs.covered_starts),
    )
    if latency is not None and base is not None and latency > params.brake_ratio * base:
        return state  # calls take far longer than usual: no growth
    state = _grow_window(state, obs, params)
    if state.header_window is None:  # a pace a header set is not grown, even between headers
        state = _grow_rate(state, obs, params)
    return state


def _grow_window(state: GovernorState, obs: Observation, params: GovernorParams) -> GovernorState:
    # Grow only when the window is in use: a key with little work must not bank a window
    # it has never tried (it would burst into 429s later).
    if obs.in_flight is not None and obs.in_flight < state.window - 1:
        return state
    window = state.window
    grown = window + 1 if state.ssthresh is None or window < state.ssthresh else window + 1 / window
    cap = _at_most(params.max_window, state.pinned_window)
    if state.ceiling is not None and obs.now < state.hold_until:
        cap = min(cap, max(params.min_window, state.ceiling - 1))
    return dataclasses.replace(state, window=max(window, min(grown, cap)))


def _grow_rate(state: GovernorState, obs: Observation, params: GovernorParams) -> GovernorState:
    """Grow a learned pace, per success, so by a share of the rate per round trip
    (``rate * latency`` successes): with no ceiling yet, by ``rate_recover``; under the
    ceiling, quickly back to just under it; at it, not during the hold; after the hold,
    probing slowly above it."""
    rate, ceiling = state.rate, state.rate_ceiling
    if rate is None or state.latency is None:
        return state
    per_round_trip = max(1.0, rate * state.latency)
    if obs.in_flight is not None and obs.in_flight < params.pace_in_use * per_round_trip:
        return state  # the pace is not what holds the key back: do not bank it
    if ceiling is None:
        grown = rate + params.rate_recover * rate / per_round_trip
    elif rate < params.rate_hold_share * ceiling:
        step = params.rate_recover * ceiling / per_round_trip
        grown = min(params.rate_hold_share * ceiling, rate + step)
    elif obs.now < state.rate_hold_until:
        grown = rate
    else:
        grown = rate + params.rate_probe * rate / per_round_trip
    return dataclasses.replace(state, rate=_at_most(grown, state.pinned_rate))


def _with_evidence(state: GovernorState, evidence: Evidence) -> GovernorState:
    starts = evidence.starts or (None, None, None)
    return dataclasses.replace(
        state,
        ok_in_flight=evidence.in_flight,
        ok_starts_1=starts[0],
        ok_starts_10=starts[1],
        ok_starts_60=starts[2],
    )


def _latencies(
    state: GovernorState, obs: Observation, params: GovernorParams
) -> tuple[float | None, float | None]:
    if obs.latency is None:
        return state.latency, state.base_latency
    if state.latency is None or state.base_latency is None:
        return obs.latency, obs.latency
    a = params.latency_alpha
    latency = (1 - a) * state.latency + a * obs.latency
    # The usual latency: a ten times slower average, so a sudden slowdown shows as a gap
    # while the spread of ordinary latencies (lognormal, prompt-driven) does not.
    slow = a / 10
    base = (1 - slow) * state.base_latency + slow * obs.latency
    return latency, base


def _hold(state: GovernorState, now: float, params: GovernorParams) -> float:
    round_trip = state.latency or 1.0
    return now + max(params.min_hold_seconds, params.hold_round_trips * round_trip)


def limit_hit(state: GovernorState, obs: Observation) -> LimitKind:
    """Which limit a 429 hit (docs/governor.md, "Which limit a 429 hit")."""
    return _limit_hit(state, obs)[0]


def _limit_hit(state: GovernorState, obs: Observation) -> tuple[LimitKind, bool]:
    """The limit, and whether the evidence told it (not a hint or a guess):

    1. what it correlates with (``policy.limits.classify``): more calls in flight than any
       accepted call had, or more starts in some window, but not both;
    2. else the headers: a request count at 0 is the rate limit;
    3. else the provider's words, when they name a limit (a hint only);
    4. else ``requests`` when it came with fewer calls in flight than the window's ceiling
       (more were fine before, so it is not the number in flight), else ``concurrency``.
    """
    told = classify(state.evidence, obs.started_with, obs.covered_starts)
    if told is not None:
        return told, True
    if obs.rate is not None and obs.rate.remaining_requests == 0:
        return "requests", False
    if obs.limit is not None:
        return obs.limit, False
    if state.ceiling is not None and obs.in_flight is not None and obs.in_flight < state.ceiling:
        return "requests", False
    return "concurrency", False


def _on_rate_limited(
    state: GovernorState, obs: Observation, params: GovernorParams
) -> GovernorState:
    cooldown, cause = state.cooldown_until, state.cooldown_cause
    if obs.retry_after and obs.now + obs.retry_after > cooldown:
        cooldown = obs.now + obs.retry_after
        cause = f"429 with {obs.wait_cause or 'retry-after'}: {obs.retry_after:g} s"
    state = dataclasses.replace(
        state,
        rate_limited=state.rate_limited + 1,
        cooldown_until=cooldown,
        cooldown_cause=cause,
    )
    if obs.sent_at < state.epoch:
        return state  # sent before the last decrease: already acted on
    kind, confirmed = _limit_hit(state, obs)
    if kind == "concurrency":
        return _shrink_window(state, obs, params, confirmed=confirmed)
    if confirmed and not state.ceiling_confirmed:
        # The rate binds, and the window's ceiling was a guess (an early 429 that could
        # have been either): let the window grow again.
        state = dataclasses.replace(state, ceiling=None, ssthresh=None, hold_until=0.0)
    if obs.rate is not None and obs.rate.limit_requests is not None:
        return state  # paced from the headers already; the cooldown does the rest
    paced = state.effective_rate
    if paced is not None:
        return _slow_pace(state, paced, obs.now, params)
    told = evidence_rate(state.evidence, obs.covered_starts)
    if told is not None:
        return _first_pace(state, told * params.rate_hold_share, obs.now)
    if obs.in_flight is not None and state.latency:
        started = obs.in_flight / state.latency
        return _first_pace(state, started * params.first_rate_share, obs.now)
    return _shrink_window(state, obs, params, confirmed=False)


def _slow_pace(
    state: GovernorState, paced: float, now: float, params: GovernorParams
) -> GovernorState:
    """A pace that drew a 429: it is the new ceiling, and the pace drops under it."""
    return dataclasses.replace(
        _with_evidence(state, Evidence(in_flight=state.ok_in_flight)),
        rate=paced * params.rate_decrease,
        rate_ceiling=paced,
        rate_hold_until=_hold(state, now, params),
        epoch=now,
    )


def _first_pace(state: GovernorState, rate: float, now: float) -> GovernorState:
    """The first request-rate 429, before any pace. The rate is what the evidence shows
    (the accepted starts per window, ``policy.limits.evidence_rate``), else only estimated
    (calls in flight over the latency, Little's law, and a limit that allows bursts lets
    through up to about twice its rate before it says no: half of that). No ceiling yet:
    the pace grows from there until the next 429 sets one."""
    return dataclasses.replace(
        _with_evidence(state, Evidence(in_flight=state.ok_in_flight)),
        rate=rate,
        rate_ceiling=None,
        epoch=now,
    )


def _shrink_window(
    state: GovernorState, obs: Observation, params: GovernorParams, *, confirmed: bool
) -> GovernorState:
    in_use = state.effective_window
    ceiling = in_use if obs.in_flight is None else min(in_use, obs.in_flight)
    if state.ceiling is not None and ceiling >= state.ceiling > params.min_window:
        # A probe at or above the known ceiling: the limit is where it was, so back to just
        # under it, with no multiplicative cut (the cut is for a limit not yet known).
        window = state.ceiling - 1
        ceiling = state.ceiling
    else:
        window = max(params.min_window, math.floor(ceiling * params.decrease))
    return dataclasses.replace(
        _with_evidence(state, Evidence(starts=state.evidence.starts)),
        window=window,
        ceiling=ceiling,
        ssthresh=max(params.min_window, ceiling - 1),
        hold_until=_hold(state, obs.now, params),
        ceiling_confirmed=confirmed,
        epoch=obs.now,
    )


def _on_backpressure(
    state: GovernorState, obs: Observation, params: GovernorParams
) -> GovernorState:
    if obs.sent_at < state.epoch:
        return state
    in_use = state.effective_window
    window = max(params.min_window, in_use * params.backpressure_decrease)
    # Keep the slow-start threshold where the window was: random 5xx must cost little.
    ssthresh = max(in_use, state.ssthresh or 0.0)
    return dataclasses.replace(state, window=window, ssthresh=ssthresh, epoch=obs.now)
