"""Which header set a wait (``parse_wait``), and which cooldowns are long enough to log."""

from __future__ import annotations

import pytest

from imagestudio.domain import RateInfo
from imagestudio.policy.cooldown import long_cooldown
from imagestudio.policy.governor import GovernorParams, Observation, initial_state, observe
from imagestudio.providers.retry_after import parse_wait

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "1"}, (1.0, "retry-after")),
        ({"retry-after-ms": "250", "retry-after": "1"}, (0.25, "retry-after-ms")),
        (
            {
                "retry-after": "1",
                "x-ratelimit-remaining-tokens": "149000",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            (1.0, "retry-after"),
        ),
        (
            {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"},
            (360.0, "x-ratelimit-reset-tokens"),
        ),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "10",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            (2.0, "x-ratelimit-reset-requests"),
        ),
        ({"ratelimit-remaining": "0", "ratelimit-reset": "7"}, (7.0, "ratelimit-reset")),
        (
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(NOW + 5)},
            (5.0, "x-ratelimit-reset"),
        ),
        ({"retry-after": "-3"}, None),
    ],
)
def test_parse_wait_names_the_header(
    headers: dict[str, str], expected: tuple[float, str] | None
) -> None:
    assert parse_wait(headers, now=NOW) == expected


P = GovernorParams()


def rate_limited(wait: float | None, cause: str | None = "retry-after") -> Observation:
    return Observation("rate_limited", NOW - 1, NOW, retry_after=wait, wait_cause=cause)


@pytest.mark.parametrize(
    ("obs", "logged", "cause"),
    [
        (rate_limited(1.0), None, "429 with retry-after: 1 s"),
        (rate_limited(30.0), None, "429 with retry-after: 30 s"),
        (rate_limited(45.0, "retry-after-ms"), 45.0, "429 with retry-after-ms: 45 s"),
        (
            rate_limited(360.0, "x-ratelimit-reset-tokens"),
            360.0,
            "429 with x-ratelimit-reset-tokens: 360 s",
        ),
        (rate_limited(None), None, None),
        (
            Observation(
                "ok",
                NOW - 1,
                NOW,
                latency=1.0,
                rate=RateInfo(limit_requests=1, remaining_requests=0, reset_requests=50.0),
            ),
            50.0,
            "no requests remaining; reset in 50 s",
        ),
    ],
)
def test_long_cooldowns_and_their_cause(
    obs: Observation, logged: float | None, cause: str | None
) -> None:
    state = observe(initial_state(P), obs, P)
    assert long_cooldown(state, obs) == logged
    assert state.cooldown_cause == cause


def test_a_shorter_wait_keeps_the_longer_cooldown_and_its_cause() -> None:
    state = observe(initial_state(P), rate_limited(60.0, "retry-after-ms"), P)
    later = observe(state, rate_limited(2.0), P)
    assert later.cooldown_until == NOW + 60
    assert later.cooldown_cause == "429 with retry-after-ms: 60 s"
    assert long_cooldown(later, rate_limited(2.0)) is None
