"""The pure parts of the error map: classification and scrubbing of secrets."""

from __future__ import annotations

import httpx
import httpx2
import pytest

from imagestudio.errors import (
    AuthFailed,
    ConnectionDropped,
    ContentRejected,
    ProviderBadRequest,
    ProviderBusy,
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
    map_provider_error,
    scrub,
    status_error,
    transport_error,
)
from imagestudio.providers.retry_after import parse_rate_info, parse_retry_after


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
        (504, None, None, "<html>Gateway Timeout</html>", ProviderTimeout),
        (502, None, None, "<html>Bad Gateway</html>", ProviderUnavailable),
        (307, None, None, "", ProviderBadRequest),
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


NOW = 2_000_000_000.0


@pytest.mark.parametrize(
    ("headers", "body", "cls", "message"),
    [
        (
            {"retry-after": "7"},
            "<html><head><title>503 Service Unavailable</title></head></html>",
            ProviderBusy,
            "provider answered 503: an HTML page '503 Service Unavailable' (retry after 7 s)",
        ),
        ({}, "upstream down", ProviderUnavailable, "provider answered 503: upstream down"),
    ],
)
def test_a_5xx_that_says_when_is_busy(
    headers: dict[str, str], body: str, cls: type[ProviderError], message: str
) -> None:
    error = status_error(503, body, headers)
    assert type(error) is cls
    assert error.message == message
    assert error.status_code == 503


def test_a_504_may_be_billed() -> None:
    error = status_error(504, "<html><title>504 Gateway Time-out</title></html>", {})
    assert isinstance(error, ProviderTimeout)
    assert error.sent is True
    assert error.status_code == 504
    assert "may have been billed" in error.message


def test_a_redirect_not_followed_names_its_location() -> None:
    location = "https://relay.example/v1/images/edits?key=sk-abcdefghijklmnopqrstuvwx"
    error = status_error(307, "", {"location": location})
    assert isinstance(error, ProviderBadRequest)
    assert error.message.startswith("provider redirected (307) to https://relay.example/v1/")
    assert "sk-abcdefghijklmnopqrstuvwx" not in error.message


@pytest.mark.parametrize(
    ("exc", "cls", "sent", "message"),
    [
        (httpx2.ConnectTimeout("t"), ProviderTimeout, False, "could not connect to the provider"),
        (httpx.PoolTimeout("t"), ProviderTimeout, False, "could not connect to the provider"),
        (httpx2.WriteTimeout("t"), ProviderTimeout, False, "could not send the request to the"),
        (httpx2.ReadTimeout("t"), ProviderTimeout, True, "provider did not answer within 180 s"),
        (httpx.ReadTimeout("t"), ProviderTimeout, True, "provider did not answer within 180 s"),
        (httpx2.RemoteProtocolError("peer closed"), ConnectionDropped, True, "connection dropped"),
        (httpx2.ReadError("reset by peer"), ConnectionDropped, True, "connection dropped"),
        (httpx.RemoteProtocolError("peer closed"), ConnectionDropped, True, "connection dropped"),
        (httpx2.ConnectError("refused"), ProviderUnavailable, None, "cannot reach provider"),
        (httpx2.WriteError("broken pipe"), ProviderUnavailable, None, "cannot reach provider"),
    ],
)
def test_transport_errors_say_whether_the_request_was_sent(
    exc: Exception, cls: type[ProviderError], sent: bool | None, message: str
) -> None:
    error = transport_error(exc, [], "180 s")
    assert type(error) is cls
    assert error.message.startswith(message)
    if sent is not None:
        assert isinstance(error, ProviderTimeout)
        assert error.sent is sent
    if cls is ConnectionDropped:
        assert "(it may have been billed)" in error.message


def test_a_timeout_names_its_limit() -> None:
    error = map_provider_error(httpx2.ReadTimeout("t"), timeout=180.0)
    assert error.message == "provider did not answer within 180 s"
    deadline = map_provider_error(TimeoutError(), timeout=0.5)
    assert deadline.message == "provider did not answer within 0.5 s"


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"ratelimit-remaining": "0", "ratelimit-reset": "12"}, 12.0),
        ({"ratelimit-remaining": "3", "ratelimit-reset": "12"}, None),  # not exhausted
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 30)}, 30.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "5"}, 5.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) - 30)}, 0.0),
        ({"retry-after": "2", "ratelimit-remaining": "0", "ratelimit-reset": "12"}, 2.0),
        ({}, None),
    ],
)
def test_other_rate_header_shapes_give_the_wait(
    headers: dict[str, str], wait: float | None
) -> None:
    assert parse_retry_after(headers, now=NOW) == wait


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"ratelimit-limit": "60", "ratelimit-remaining": "0", "ratelimit-reset": "2"},
            (60, 0, 2.0),
        ),
        ({"x-ratelimit-limit": "100", "x-ratelimit-remaining": "7"}, (100, 7, None)),
        (
            {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499"},
            (500, 499, None),
        ),
    ],
)
def test_rate_info_reads_other_shapes(
    headers: dict[str, str], expected: tuple[int, int, float | None]
) -> None:
    rate = parse_rate_info(headers)
    assert rate is not None
    assert (rate.limit_requests, rate.remaining_requests, rate.reset_requests) == expected
