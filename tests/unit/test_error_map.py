"""The pure parts of the error map: classification and scrubbing of secrets."""

from __future__ import annotations

import pytest

from imagestudio.errors import (
    AuthFailed,
    ContentRejected,
    ProviderBadRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from imagestudio.providers.error_map import (
    classify_status,
    error_fields,
    limit_kind,
    scrub,
    status_error,
)


@pytest.mark.parametrize(
    ("status", "code", "type_", "message", "cls"),
    [
        (429, "rate_limit_exceeded", "requests", "Rate limit reached", RateLimited),
        (429, "insufficient_quota", "insufficient_quota", "quota", QuotaExhausted),
        (429, None, "insufficient_quota", "quota", QuotaExhausted),
        (401, "invalid_api_key", None, "bad key", AuthFailed),
        (403, None, None, "forbidden", AuthFailed),
        (400, "moderation_blocked", None, "blocked", ContentRejected),
        (400, "content_policy_violation", None, "no", ContentRejected),
        (400, None, None, "Your request was rejected by our safety system", ContentRejected),
        (400, "invalid_value", None, "Invalid size", ProviderBadRequest),
        (404, None, None, "model not found", ProviderBadRequest),
        (422, None, None, "unprocessable", ProviderBadRequest),
        (413, None, None, "too large", ProviderBadRequest),
        (408, None, None, "timeout", ProviderTimeout),
        (409, None, None, "conflict", ProviderUnavailable),
        (500, "server_error", None, "oops", ProviderUnavailable),
        (503, None, None, "overloaded", ProviderUnavailable),
    ],
)
def test_classify_status(
    status: int, code: str | None, type_: str | None, message: str, cls: type[ProviderError]
) -> None:
    assert classify_status(status, code, type_, message) is cls


def test_status_error_reads_retry_after_and_keeps_status() -> None:
    body = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
    error = status_error(429, body, {"retry-after-ms": "1500"})
    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(1.5)
    assert error.status_code == 429
    assert "slow down" in error.message


def test_error_fields_accepts_the_body_or_its_error_member() -> None:
    inner = {"message": "m", "type": "t", "code": "c", "param": None}
    assert error_fields({"error": inner}) == ("c", "t", "m")
    assert error_fields(inner) == ("c", "t", "m")
    assert error_fields("plain text") == (None, None, "plain text")
    assert error_fields(None) == (None, None, "")


@pytest.mark.parametrize(
    "text",
    [
        "Incorrect API key provided: my-secret-key-123.",
        "Incorrect API key provided: sk-proj-abcdEFGH1234.",
        "Incorrect API key provided: sk-abc*********wxyz.",
        "header was Authorization: Bearer tok.en-value_123",
        "header was authorization: bearer my-secret-key-123",
    ],
)
def test_scrub_removes_keys_and_tokens(text: str) -> None:
    cleaned = scrub(text, ["my-secret-key-123"])
    for secret in (
        "my-secret-key-123",
        "sk-proj-abcdEFGH1234",
        "abc*********wxyz",
        "tok.en-value_123",
    ):
        assert secret not in cleaned
    assert "[REDACTED]" in cleaned


def test_scrub_cuts_long_messages() -> None:
    assert len(scrub("x" * 5000)) == 500


def test_scrub_leaves_ordinary_words_alone() -> None:
    assert scrub("the task-force asked") == "the task-force asked"


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "Rate limit reached for gpt-image-1 in organization org-x on requests per min (RPM): "
            "Limit 5, Used 5, Requested 1.",
            "requests",
        ),
        ("Rate limit reached on tokens per min (TPM): Limit 40000", "requests"),
        ("Rate limit reached for dall-e-3 on images per minute (IPM)", "requests"),
        ("Rate limit reached for gpt-image-1 on concurrent requests: Limit 8", "concurrency"),
        ("Too many requests in flight", "concurrency"),
        ("Too Many Requests", None),
        ("", None),
    ],
)
def test_limit_kind_reads_which_limit_a_429_names(message: str, kind: str | None) -> None:
    assert limit_kind(message) == kind


def test_a_429_carries_the_limit_its_message_names() -> None:
    body = {"error": {"message": "Rate limit reached on requests per min (RPM)"}}
    error = status_error(429, body, {})
    assert isinstance(error, RateLimited)
    assert error.limit == "requests"
