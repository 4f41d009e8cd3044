"""The faults a fake provider injects, and the triggers that ask for them.

- latency: drawn per call from ``latency_dist`` with mean ``latency_ms``; ``[[slow]]`` in the
  prompt multiplies it by ten;
- ``error_rate``: that share of the admitted calls answer 500 ``server_error`` after it;
- key triggers: ``bad`` in the key -> 401 ``invalid_api_key`` (the message echoes the key, as
  some compatible gateways do, so tests prove adapters scrub it); ``noquota`` -> 429
  ``insufficient_quota``;
- prompt triggers: ``[[refuse]]`` -> 400 ``moderation_blocked`` (``content_policy_violation``
  on chat); ``[[noimage]]`` -> 200 without an image.

Decisions are pure: ``plan_call`` takes the random source, ``raise_planned_fault`` the plan.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from imagestudio.providers.fake.config import FakeProviderConfig
from imagestudio.providers.fake.reject import Reject

SLOW, REFUSE, NO_IMAGE = "[[slow]]", "[[refuse]]", "[[noimage]]"
SLOW_FACTOR = 10
_LOGNORMAL_SIGMA = 0.5


def sample_latency(rng: random.Random, mean_ms: float, dist: str) -> float:
    """One latency in seconds drawn from ``dist`` with mean ``mean_ms``."""
    if mean_ms <= 0:
        return 0.0
    if dist == "uniform":
        millis = rng.uniform(0.5 * mean_ms, 1.5 * mean_ms)
    elif dist == "lognormal":
        mu = math.log(mean_ms) - _LOGNORMAL_SIGMA**2 / 2
        millis = rng.lognormvariate(mu, _LOGNORMAL_SIGMA)
    elif dist == "exponential":
        millis = rng.expovariate(1.0 / mean_ms)
    else:
        millis = mean_ms
    return millis / 1000.0


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What an admitted call will do: how long it takes, and whether it answers 500."""

    latency: float
    fails: bool

    def wants_image(self, prompt: str) -> bool:
        """Whether the answer carries an image (so it is worth rendering one)."""
        return not self.fails and REFUSE not in prompt and NO_IMAGE not in prompt


def plan_call(rng: random.Random, config: FakeProviderConfig, prompt: str) -> CallPlan:
    """Draw one call's latency and fault (the latency first, as the random sequence has it)."""
    latency = sample_latency(rng, config.latency_ms, config.latency_dist)
    if SLOW in prompt:
        latency *= SLOW_FACTOR
    return CallPlan(latency, rng.random() < config.error_rate)


def raise_planned_fault(plan: CallPlan, endpoint: str, prompt: str) -> None:
    """Raise the 500 or the content-policy refusal the plan and the prompt ask for, if any."""
    if plan.fails:
        raise Reject(
            500,
            "The server had an error while processing your request. Sorry about that!",
            type_="server_error",
            code="server_error",
        )
    if REFUSE in prompt:
        raise Reject(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may contain "
            "text that is not allowed by our safety system.",
            type_="image_generation_user_error",
            code="moderation_blocked"
            if endpoint.startswith("images")
            else "content_policy_violation",
        )


def check_auth(key: str | None) -> None:
    """401 without a key, or with a key that contains ``bad``."""
    if not key:
        raise Reject(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    if "bad" in key:
        raise Reject(
            401,
            f"Incorrect API key provided: {key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def check_quota(key: str) -> None:
    """429 ``insufficient_quota`` (not a rate limit: waiting does not help) for ``noquota``."""
    if "noquota" in key:
        raise Reject(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            type_="insufficient_quota",
            code="insufficient_quota",
        )
