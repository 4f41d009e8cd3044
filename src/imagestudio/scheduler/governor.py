"""The provider governor: how many calls one provider key may have in flight, and how fast
they may start. Pure: a state plus an observation gives a new state; the store keeps the
state in the database (one row per provider key), so every worker on every machine obeys
the same numbers, and the claim applies it.

Three controls (docs/governor.md):

- **Window W**, counted as leases of running tasks of the key. It starts small (or where
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
- **Cooldown**: when the provider says when to come back (``retry-after``, or nothing
  remaining until the reset), nobody starts a call for that key before then.

Operators may pin ``window`` and ``rate`` per key; the default is adaptive.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from imagestudio.domain import RateInfo

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


@dataclass(frozen=True, slots=True)
class GovernorState:
    window: float
    ssthresh: float | None = None
    ceiling: float | None = None
    hold_until: float = 0.0
    epoch: float = 0.0
    cooldown_until: float = 0.0
    rate: float | None = None  # starts per second; None = not paced
    tat: float = 0.0  # GCRA theoretical arrival time of the next start
    latency: float | None = None
    base_latency: float | None = None
    rate_limited: int = 0
    pinned_window: float | None = None
    pinned_rate: float | None = None

    @property
    def effective_window(self) -> float:
        return self.pinned_window if self.pinned_window is not None else self.window

    @property
    def effective_rate(self) -> float | None:
        return self.pinned_rate if self.pinned_rate is not None else self.rate


def initial_state(
    params: GovernorParams, *, window: float | None = None, rate: float | None = None
) -> GovernorState:
    """A new key's state; ``window``/``rate`` pin it (operators who know the limits)."""
    return GovernorState(window=params.initial_window, pinned_window=window, pinned_rate=rate)


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
    rate = state.rate
    if info.limit_requests is not None:
        per_minute = info.limit_requests
        rate = (
            None if per_minute >= UNLIMITED_REQUESTS else per_minute / 60 * params.header_rate_share
        )
    cooldown = state.cooldown_until
    if info.remaining_requests == 0 and info.reset_requests is not None:
        next_slot = 60 / info.limit_requests if info.limit_requests else info.reset_requests
        cooldown = max(cooldown, obs.now + min(info.reset_requests, next_slot))
    return dataclasses.replace(state, rate=rate, cooldown_until=cooldown)


def _on_success(state: GovernorState, obs: Observation, params: GovernorParams) -> GovernorState:
    latency, base = _latencies(state, obs, params)
    state = dataclasses.replace(state, latency=latency, base_latency=base)
    braking = latency is not None and base is not None and latency > params.brake_ratio * base
    # Grow only when the window is in use: a key with little work must not bank a window
    # it has never tried (it would burst into 429s later).
    idle = obs.in_flight is not None and obs.in_flight < state.window - 1
    if state.pinned_window is not None or braking or idle:
        return state
    window = state.window
    grown = window + 1 if state.ssthresh is None or window < state.ssthresh else window + 1 / window
    cap = params.max_window
    if state.ceiling is not None and obs.now < state.hold_until:
        cap = max(params.min_window, state.ceiling - 1)
    return dataclasses.replace(state, window=max(window, min(grown, cap)))


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


def _on_rate_limited(
    state: GovernorState, obs: Observation, params: GovernorParams
) -> GovernorState:
    cooldown = state.cooldown_until
    if obs.retry_after:
        cooldown = max(cooldown, obs.now + obs.retry_after)
    state = dataclasses.replace(state, rate_limited=state.rate_limited + 1, cooldown_until=cooldown)
    if obs.sent_at < state.epoch or state.pinned_window is not None:
        return state  # sent before the last decrease: already acted on
    ceiling = state.window if obs.in_flight is None else min(state.window, obs.in_flight)
    window = max(params.min_window, math.floor(ceiling * params.decrease))
    return dataclasses.replace(
        state,
        window=window,
        ceiling=ceiling,
        ssthresh=max(params.min_window, ceiling - 1),
        hold_until=_hold(state, obs.now, params),
        epoch=obs.now,
    )


def _on_backpressure(
    state: GovernorState, obs: Observation, params: GovernorParams
) -> GovernorState:
    if obs.sent_at < state.epoch or state.pinned_window is not None:
        return state
    window = max(params.min_window, state.window * params.backpressure_decrease)
    # Keep the slow-start threshold where the window was: random 5xx must cost little.
    ssthresh = max(state.window, state.ssthresh or 0.0)
    return dataclasses.replace(state, window=window, ssthresh=ssthresh, epoch=obs.now)


@dataclass(frozen=True, slots=True)
class Paced:
    admitted: int
    tat: float
    next_at: float | None  # when the next start would be allowed, if some were held back


def pace(state: GovernorState, now: float, wanted: int) -> Paced:
    """How many of ``wanted`` starts the cooldown and the pace allow now (GCRA, no burst)."""
    if now < state.cooldown_until:
        return Paced(0, state.tat, state.cooldown_until)
    rate = state.effective_rate
    if rate is None or rate <= 0:
        return Paced(wanted, state.tat, None)
    interval = 1 / rate
    tat = max(state.tat, now)
    admitted = 0
    while admitted < wanted and tat <= now + 1e-9:
        admitted += 1
        tat += interval
    return Paced(admitted, tat, tat if admitted < wanted else None)
