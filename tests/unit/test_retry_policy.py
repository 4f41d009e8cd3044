"""The retry decision for every error class, and the job status roll-up: pure tables."""

from __future__ import annotations

import inspect
import random
from datetime import UTC, datetime, timedelta

import pytest

from imagestudio import errors
from imagestudio.domain import ImageStatus, JobStatus
from imagestudio.errors import (
    AnswerTooLarge,
    ApiBaseRefused,
    ApiKeyRequired,
    AuthFailed,
    BadImage,
    ConnectionDropped,
    ContentRejected,
    DeadlineExceeded,
    ImageStudioError,
    InputError,
    JobConflict,
    JobNotFound,
    LeaseLost,
    NoImageReturned,
    OutboundLimit,
    PayloadInvalid,
    ProviderBadRequest,
    ProviderBusy,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
    StorageError,
    TooMuchInFlight,
    UnsafeURL,
)
from imagestudio.policy.retry import (
    AttemptState,
    Decision,
    FailImage,
    FailJob,
    Retry,
    RetryPolicy,
    backoff,
    decide,
    run_after,
)
from imagestudio.policy.rollup import rollup_status

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(
    max_attempts=4,
    max_rate_limit_snoozes=5,
    max_billed_timeouts=1,
    deadline_seconds=600.0,
    backoff_base=1.0,
    backoff_max=8.0,
)


def state(
    attempts: int = 1, snoozes: int = 0, billed_timeouts: int = 0, age: float = 10.0
) -> AttemptState:
    return AttemptState(
        attempts=attempts,
        snoozes=snoozes,
        billed_timeouts=billed_timeouts,
        first_started_at=NOW - timedelta(seconds=age),
    )


def run(error: BaseException, at: AttemptState | None = None, seed: int = 7) -> Decision:
    return decide(error, at or state(), POLICY, now=NOW, rng=random.Random(seed))


TRANSIENT: list[BaseException] = [
    ProviderUnavailable("502 bad gateway", status_code=502),
    ProviderTimeout("no answer in 180s", sent=False),
    ProviderTimeout("no answer in 180s", sent=True),
    ConnectionDropped("connection dropped after the request was sent", sent=True),
    ProviderBusy("503 with retry-after 0", retry_after=0.0, status_code=503),
    NoImageReturned("2xx without an image"),
    SourceUnavailable("cdn answered 503"),
    StorageError("disk full"),
    LeaseLost("lease gone"),
    DeadlineExceeded("not done within the total deadline of 5 s", seconds=5.0),
    OutboundLimit("an outbound limit"),
    ProviderError("unclassified provider failure", status_code=418),
    ImageStudioError("worker lost 1 times while running it"),
    RuntimeError("a bug in a dependency"),
    OSError("connection reset by peer"),
]
PERMANENT: list[BaseException] = [
    ContentRejected("moderation_blocked: your request was rejected", status_code=400),
    ProviderBadRequest("Invalid size '999x999'", status_code=400),
    SourceNotFound("source answered 404"),
    SourceTooLarge("source is 90 MB"),
    BadImage("not an image"),
    UnsafeURL("10.0.0.1 is a private address"),
    AnswerTooLarge("answer over the cap of 1.0 MB", limit=1024 * 1024),
    PayloadInvalid("options.model", "unknown model"),
    JobConflict("job_id reused"),
    JobNotFound("no job"),
    ApiKeyRequired("send the key again"),
    InputError("generic input error"),
    TooMuchInFlight("100 jobs in flight", retry_after=30.0),
]
JOB_FATAL: list[BaseException] = [
    AuthFailed("Incorrect API key provided", status_code=401),
    QuotaExhausted("You exceeded your current quota", status_code=429),
    ApiBaseRefused("refused to connect to the provider's api_base: 127.0.0.1"),
]


def _name(error: BaseException) -> str:
    return type(error).__name__


def test_every_error_class_is_in_a_table() -> None:
    declared = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, ImageStudioError) and cls.__module__ == errors.__name__
    }
    covered = {type(e) for e in [*TRANSIENT, *PERMANENT, *JOB_FATAL, RateLimited("429")]}
    assert declared <= covered, f"add to a table: {sorted(c.__name__ for c in declared - covered)}"


@pytest.mark.parametrize("error", TRANSIENT, ids=_name)
@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_transient_retries_with_jittered_exponential_backoff(
    error: BaseException, attempts: int
) -> None:
    decision = run(error, state(attempts=attempts))
    assert isinstance(decision, Retry)
    assert decision.consumes_attempt
    ceiling = min(POLICY.backoff_max, POLICY.backoff_base * 2 ** (attempts - 1))
    assert 0 <= decision.delay <= ceiling


@pytest.mark.parametrize("error", TRANSIENT, ids=_name)
def test_transient_gives_up_when_attempts_are_used(error: BaseException) -> None:
    decision = run(error, state(attempts=POLICY.max_attempts))
    assert isinstance(decision, FailImage)
    assert f"failed after {POLICY.max_attempts} attempts" in decision.reason
    assert _name(error) in decision.reason


@pytest.mark.parametrize("error", PERMANENT, ids=_name)
def test_permanent_fails_the_image_at_once_with_the_message(error: BaseException) -> None:
    decision = run(error, state(attempts=1))
    assert isinstance(decision, FailImage)
    assert decision.reason.startswith(f"{_name(error)}: ")
    assert str(error) in decision.reason or getattr(error, "message", "") in decision.reason


@pytest.mark.parametrize("error", JOB_FATAL, ids=_name)
@pytest.mark.parametrize("at", [state(), state(attempts=9, snoozes=99, age=99999)])
def test_auth_and_quota_fail_the_job(error: BaseException, at: AttemptState) -> None:
    decision = run(error, at)
    assert isinstance(decision, FailJob)
    assert decision.reason == f"{_name(error)}: {error}"


@pytest.mark.parametrize("retry_after", [0.5, 2.0, 5.0, 30.0, 120.0])
@pytest.mark.parametrize("seed", range(5))
def test_rate_limited_waits_at_least_retry_after(retry_after: float, seed: int) -> None:
    decision = run(RateLimited("429", retry_after=retry_after), seed=seed)
    assert isinstance(decision, Retry)
    assert not decision.consumes_attempt
    assert retry_after <= decision.delay <= retry_after + min(1.0, 0.2 * retry_after)


@pytest.mark.parametrize("snoozes", [0, 1, 2, 3, 4])
def test_rate_limited_without_retry_after_backs_off(snoozes: int) -> None:
    decision = run(RateLimited("429", retry_after=None), state(snoozes=snoozes))
    assert isinstance(decision, Retry)
    assert not decision.consumes_attempt
    assert 0 <= decision.delay <= min(POLICY.backoff_max, 2.0**snoozes)


def test_rate_limited_does_not_use_up_attempts() -> None:
    # Attempts are exhausted, but a 429 is a snooze: it still waits and tries again.
    decision = run(RateLimited("429", retry_after=1.0), state(attempts=POLICY.max_attempts + 3))
    assert isinstance(decision, Retry)
    assert not decision.consumes_attempt


def test_rate_limited_snoozes_are_bounded() -> None:
    decision = run(
        RateLimited("429", retry_after=1.0), state(snoozes=POLICY.max_rate_limit_snoozes)
    )
    assert isinstance(decision, FailImage)
    assert "rate limited" in decision.reason


def test_unsent_timeout_is_not_billed() -> None:
    decision = run(ProviderTimeout("connect timeout", sent=False), state(billed_timeouts=5))
    assert isinstance(decision, Retry)
    assert not decision.billed_timeout


def test_billed_timeouts_are_bounded() -> None:
    first = run(ProviderTimeout("read timeout", sent=True), state(billed_timeouts=0))
    assert isinstance(first, Retry)
    assert first.billed_timeout
    assert first.consumes_attempt
    second = run(ProviderTimeout("read timeout", sent=True), state(attempts=2, billed_timeouts=1))
    assert isinstance(second, FailImage)
    assert "billed" in second.reason


@pytest.mark.parametrize(
    ("error", "billed_before", "expected"),
    [
        (ConnectionDropped("dropped mid-answer", sent=True), 0, "retry, billed"),
        (ConnectionDropped("dropped mid-answer", sent=True), 1, "fail, billed"),
        (ProviderTimeout("504 from a gateway", sent=True), 1, "fail, billed"),
        (ProviderTimeout("could not connect", sent=False), 1, "retry"),
    ],
)
def test_dropped_connections_are_bounded_like_billed_timeouts(
    error: BaseException, billed_before: int, expected: str
) -> None:
    decision = run(error, state(attempts=billed_before + 1, billed_timeouts=billed_before))
    outcome = {Retry: "retry", FailImage: "fail", FailJob: "fail the job"}[type(decision)]
    if isinstance(decision, Retry) and decision.billed_timeout:
        outcome += ", billed"
    if isinstance(decision, FailImage):
        assert "may have been billed" in decision.reason
        outcome += ", billed"
    assert outcome == expected


@pytest.mark.parametrize(
    ("retry_after", "attempts", "at_least", "at_most"),
    [
        (7.0, 1, 7.0, 7.0),  # longer than the backoff: exactly what the server asked
        (30.0, 3, 30.0, 30.0),
        (0.0, 3, 0.0, 4.0),  # shorter: the usual backoff (ceiling 4 s on attempt 3)
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_a_busy_provider_is_retried_no_sooner_than_it_asked(
    retry_after: float, attempts: int, at_least: float, at_most: float, seed: int
) -> None:
    busy = ProviderBusy("503 retry after", retry_after=retry_after, status_code=503)
    decision = run(busy, state(attempts=attempts), seed=seed)
    assert isinstance(decision, Retry)
    assert decision.consumes_attempt
    assert not decision.billed_timeout
    assert at_least <= decision.delay <= at_most


def test_a_busy_provider_still_uses_up_attempts() -> None:
    busy = ProviderBusy("503 retry after", retry_after=5.0, status_code=503)
    decision = run(busy, state(attempts=POLICY.max_attempts))
    assert isinstance(decision, FailImage)
    assert "ProviderBusy" in decision.reason


@pytest.mark.parametrize(
    "error",
    [*TRANSIENT, RateLimited("429", retry_after=1.0), RateLimited("429")],
    ids=_name,
)
def test_deadline_fails_the_image(error: BaseException) -> None:
    decision = run(error, state(attempts=1, age=POLICY.deadline_seconds))
    assert isinstance(decision, FailImage)
    assert decision.reason.startswith("gave up after 600s")


def test_just_before_the_deadline_still_retries() -> None:
    decision = run(ProviderUnavailable("503"), state(age=POLICY.deadline_seconds - 1))
    assert isinstance(decision, Retry)


def test_same_seed_same_decision() -> None:
    error = ProviderUnavailable("503")
    assert run(error, seed=42) == run(error, seed=42)
    decisions = [run(error, state(attempts=3), seed=s) for s in range(20)]
    delays = {d.delay for d in decisions if isinstance(d, Retry)}
    assert len(delays) == 20  # jitter: every seed waits differently


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 10, 40])
def test_backoff_is_full_jitter_capped(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(POLICY.backoff_max, POLICY.backoff_base * 2 ** (attempt - 1))
    draws = [backoff(attempt, POLICY, rng) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in draws)
    assert max(draws) > ceiling / 2  # spreads over the whole range


def test_run_after_adds_the_delay() -> None:
    assert run_after(NOW, 2.5) == NOW + timedelta(seconds=2.5)


Q, R, S, F, C = (s.value for s in ImageStatus)


@pytest.mark.parametrize(
    ("counts", "cancel_requested", "expected"),
    [
        ({Q: 5}, False, JobStatus.QUEUED),
        ({Q: 4, R: 1}, False, JobStatus.RUNNING),
        ({R: 5}, False, JobStatus.RUNNING),
        ({Q: 2, S: 3}, False, JobStatus.RUNNING),  # started, some waiting to retry
        ({Q: 1, F: 1}, False, JobStatus.RUNNING),
        ({S: 5}, False, JobStatus.SUCCEEDED),
        ({S: 5, F: 0, C: 0}, False, JobStatus.SUCCEEDED),
        ({S: 4, F: 1}, False, JobStatus.PARTIALLY_FAILED),
        ({F: 5}, False, JobStatus.FAILED),
        ({S: 2, C: 3}, False, JobStatus.CANCELLED),
        ({S: 5}, True, JobStatus.CANCELLED),
        ({C: 5}, True, JobStatus.CANCELLED),
        ({R: 1, C: 4}, True, JobStatus.RUNNING),  # cancel asked, a call still finishing
        ({Q: 5}, True, JobStatus.QUEUED),
    ],
)
def test_rollup_status(counts: dict[str, int], cancel_requested: bool, expected: JobStatus) -> None:
    assert rollup_status(counts, cancel_requested=cancel_requested) is expected


def test_rollup_status_accepts_enum_keys() -> None:
    counts = {ImageStatus.SUCCEEDED: 2, ImageStatus.FAILED: 1}
    assert rollup_status(counts, cancel_requested=False) is JobStatus.PARTIALLY_FAILED
