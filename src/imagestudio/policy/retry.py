"""What a failed attempt means for its image and its job: one pure decision, table-tested.

transient   RateLimited, ProviderUnavailable, ProviderTimeout, NoImageReturned,
            SourceUnavailable, StorageError, DeadlineExceeded (an outbound request's
            total deadline, when its caller did not map it), LeaseLost-free worker crashes
            -> retry with exponential backoff and full jitter, never sooner than the
               server asked. A RateLimited is a *snooze*: it does not use up an attempt.
               A ProviderTimeout after the request was sent may already be billed, so
               those are bounded separately (``max_billed_timeouts``); a ConnectionDropped
               (the connection broke after the request was sent) is one of them.
               A ProviderBusy (a 5xx with retry-after) waits at least what it asked.
permanent   ContentRejected, ProviderBadRequest, SourceNotFound, SourceTooLarge,
            BadImage, UnsafeURL, AnswerTooLarge (over an outbound byte cap: the same
            request gets the same answer) -> the image fails now with the cleaned message.
job-fatal   AuthFailed, QuotaExhausted, ApiBaseRefused (the api_base now resolves to a
            refused address) -> the job stops; its queued images fail with the same
            reason without calling the provider.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from imagestudio.errors import (
    AnswerTooLarge,
    ApiBaseRefused,
    AuthFailed,
    ContentRejected,
    ImageStudioError,
    InputError,
    ProviderBadRequest,
    ProviderBusy,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    max_rate_limit_snoozes: int = 50
    max_billed_timeouts: int = 1
    deadline_seconds: float = 1800.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0


@dataclass(frozen=True, slots=True)
class AttemptState:
    """What the image has used so far, counting the attempt that just failed."""

    attempts: int
    snoozes: int
    billed_timeouts: int
    first_started_at: datetime


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float
    consumes_attempt: bool
    billed_timeout: bool = False


@dataclass(frozen=True, slots=True)
class FailImage:
    reason: str


@dataclass(frozen=True, slots=True)
class FailJob:
    reason: str


Decision = Retry | FailImage | FailJob


def error_kind(error: BaseException) -> str:
    return type(error).__name__


def describe(error: BaseException) -> str:
    message = error.message if isinstance(error, ImageStudioError) else str(error)
    return f"{error_kind(error)}: {message}"[:2000]


def backoff(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** max(attempt - 1, 0))
    return rng.uniform(0, ceiling)


def decide(
    error: BaseException,
    state: AttemptState,
    policy: RetryPolicy,
    *,
    now: datetime,
    rng: random.Random,
) -> Decision:
    """Retry, fail the image, or fail the job, for ``error`` raised by the attempt."""
    if isinstance(error, AuthFailed | QuotaExhausted | ApiBaseRefused):
        return FailJob(describe(error))
    if isinstance(error, InputError | ContentRejected | ProviderBadRequest | AnswerTooLarge):
        return FailImage(describe(error))
    age = (now - state.first_started_at).total_seconds()
    if age >= policy.deadline_seconds:
        return FailImage(f"gave up after {age:.0f}s: {describe(error)}")
    if isinstance(error, RateLimited):
        return _snooze(error, state, policy, rng)
    billed = isinstance(error, ProviderTimeout) and error.sent
    if billed and state.billed_timeouts >= policy.max_billed_timeouts:
        return FailImage(
            f"timed out {state.billed_timeouts + 1} times after the request was sent "
            f"(each may have been billed): {describe(error)}"
        )
    if state.attempts >= policy.max_attempts:
        return FailImage(f"failed after {state.attempts} attempts: {describe(error)}")
    delay = backoff(state.attempts, policy, rng)
    if isinstance(error, ProviderBusy):
        delay = max(delay, error.retry_after)
    return Retry(delay=delay, consumes_attempt=True, billed_timeout=billed)


def _snooze(
    error: RateLimited, state: AttemptState, policy: RetryPolicy, rng: random.Random
) -> Decision:
    if state.snoozes >= policy.max_rate_limit_snoozes:
        return FailImage(f"still rate limited after {state.snoozes} waits: {describe(error)}")
    if error.retry_after:
        delay = error.retry_after + rng.uniform(0, min(1.0, 0.2 * error.retry_after))
    else:
        delay = backoff(min(state.snoozes + 1, 6), policy, rng)
    return Retry(delay=delay, consumes_attempt=False)


def run_after(now: datetime, delay: float) -> datetime:
    return now + timedelta(seconds=delay)
