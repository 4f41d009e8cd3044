"""The limits a fake provider enforces (requests in flight, requests per minute) and the
``x-ratelimit-*`` / ``retry-after`` headers that report them, as OpenAI shapes them.

``Gcra`` and ``format_duration`` are pure; ``Limits`` is the mutable part of one fake's state
(its limiter and the requests in flight), touched only from the fake's event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from imagestudio.providers.fake.config import FakeProviderConfig
from imagestudio.providers.fake.reject import Reject

UNLIMITED = 10_000  # what the x-ratelimit-* headers report when no limit is configured
ORG = "org-fake"


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600.0)
    minutes, secs = divmod(rest, 60.0)
    text = f"{round(secs, 3):g}s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text


class Gcra:
    """Generic cell rate algorithm: ``rpm`` requests per minute, bursts of ``burst``.

    Pure: every method takes ``now`` (monotonic seconds).
    """

    def __init__(self, rpm: float, burst: int) -> None:
        self.rpm = rpm
        self.burst = burst
        self.interval = 60.0 / rpm
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0

    def acquire(self, now: float) -> float:
        """0.0 if a request may go now (and count it), else the seconds until one may."""
        tat = max(self._tat, now)
        wait = tat - self.tolerance - now
        if wait > 1e-9:
            return wait
        self._tat = tat + self.interval
        return 0.0

    def remaining(self, now: float) -> int:
        backlog = max(0.0, self._tat - now)
        return max(
            0,
            min(
                self.burst,
                math.floor((self.tolerance + self.interval - backlog) / self.interval + 1e-9),
            ),
        )

    def reset_after(self, now: float) -> float:
        return max(0.0, self._tat - now)


def default_burst(rpm: float) -> int:
    """One second's worth of requests, at least one (OpenAI enforces limits in short slices)."""
    return max(1, math.ceil(rpm / 60.0))


def rate_limited(message: str, wait: float, headers: dict[str, str]) -> Reject:
    """A 429 ``rate_limit_exceeded`` that says how long to wait."""
    headers = headers | {
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
    return Reject(429, message, type_="requests", code="rate_limit_exceeded", headers=headers)


@dataclass(slots=True)
class Admission:
    """An admitted request: its slot and the x-ratelimit-* headers to answer with."""

    flight_id: int
    planned_end: float
    headers: dict[str, str]


class Limits:
    """One fake's concurrency slots and rpm limiter. ``ids`` numbers the slots."""

    def __init__(self, config: FakeProviderConfig, ids: Iterator[int]) -> None:
        self.config = config
        self.limiter: Gcra | None = None
        self.in_flight: dict[int, float] = {}  # flight id -> planned end (monotonic)
        self.peak_in_flight = 0
        self._ids = ids
        self.rebuild_limiter()

    def rebuild_limiter(self) -> None:
        """A fresh limiter for the configured rpm (its bucket full)."""
        rpm = self.config.rpm
        burst = self.config.rpm_burst or (default_burst(rpm) if rpm else 1)
        self.limiter = Gcra(rpm, burst) if rpm else None

    def reset(self) -> None:
        self.peak_in_flight = len(self.in_flight)
        self.rebuild_limiter()

    def admit(self, now: float, model: str) -> Admission:
        """Take a concurrency slot and an rpm token, or raise a 429 ``Reject``."""
        self._check_concurrency(now, model)
        if self.limiter is not None:
            wait = self.limiter.acquire(now)
            if wait > 0:
                raise rate_limited(self._rpm_message(model, wait), wait, self._headers(now, wait))
        flight_id = next(self._ids)
        self.in_flight[flight_id] = now  # the planned end is set by plan_end()
        self.peak_in_flight = max(self.peak_in_flight, len(self.in_flight))
        return Admission(flight_id, now, self._headers(now, None))

    def plan_end(self, admission: Admission, latency: float) -> None:
        """Record when an admitted request will end: the wait a concurrency 429 announces."""
        self.in_flight[admission.flight_id] = admission.planned_end + latency

    def release(self, admission: Admission) -> None:
        self.in_flight.pop(admission.flight_id, None)

    def _check_concurrency(self, now: float, model: str) -> None:
        limit = self.config.concurrency
        if limit is None or len(self.in_flight) < limit:
            return
        wait = max(0.001, min(self.in_flight.values()) - now)
        message = (
            f"Rate limit reached for {model} in organization {ORG} on concurrent requests: "
            f"Limit {limit}, Used {len(self.in_flight)}, Requested 1. "
            f"Please try again in {format_duration(wait)}."
        )
        # Like real providers, a concurrency limit is not reported in the x-ratelimit-*
        # headers (those count requests per minute); only the wait is.
        raise rate_limited(message, wait, self._headers(now, None))

    def _rpm_message(self, model: str, wait: float) -> str:
        rpm = self.config.rpm
        return (
            f"Rate limit reached for {model} in organization {ORG} on requests per min (RPM): "
            f"Limit {rpm:g}, Used {rpm:g}, Requested 1. "
            f"Please try again in {format_duration(wait)}."
        )

    def _headers(self, now: float, wait: float | None) -> dict[str, str]:
        """OpenAI's request headers: the per-minute limit, what remains, when it resets."""
        if not self.config.ratelimit_headers:
            return {}
        if self.limiter is not None:
            limit, remaining = round(self.config.rpm or 0), self.limiter.remaining(now)
            reset = wait if wait is not None else self.limiter.reset_after(now)
        else:
            limit, remaining, reset = UNLIMITED, UNLIMITED - 1, 0.0
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": format_duration(reset),
        }
