"""parse_retry_after and parse_duration: header tables, no I/O."""

from __future__ import annotations

import pytest

from imagestudio.providers.retry_after import parse_duration, parse_retry_after

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("250ms", 0.25),
        ("20ms", 0.02),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("2", 2.0),
        ("0.75", 0.75),
        (" 3s ", 3.0),
        ("", None),
        ("soon", None),
        ("5 s", None),
        ("1x", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    expected = None if seconds is None else pytest.approx(seconds)
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        # one value at two precisions: the millisecond one wins over the rounded seconds
        ({"retry-after": "1", "retry-after-ms": "250"}, 0.25),
        # a reset counts only for the limit that is exhausted (remaining 0) ...
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "6m0s"}, None),  # no remaining count: says nothing
        ({"x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"}, None),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "7s",
            },
            7.0,
        ),
        # ... and retry-after wins when present: OpenAI's 429 with tokens to spare costs 1 s
        (
            {
                "retry-after": "1",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-remaining-tokens": "149000",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            1.0,
        ),
        ({"retry-after": "1", "x-ratelimit-reset-tokens": "3s"}, 1.0),
        ({"retry-after-ms": "1200", "x-ratelimit-reset-requests": "250ms"}, 1.2),
        (
            {
                "retry-after": "garbage",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
            },
            2.0,
        ),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, 10.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, 0.0),
        ({"retry-after": "later"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "999999999"}, None),
        ({"retry-after-ms": "oops", "retry-after": "2"}, 2.0),
        ({"x-ratelimit-reset-requests": "garbage", "retry-after": "1"}, 1.0),
        (
            {
                "retry-after": "-5",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "4s",
            },
            4.0,
        ),
        ({"content-type": "application/json"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    result = parse_retry_after(headers, now=NOW)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def test_http_date_uses_the_clock_when_now_is_not_given() -> None:
    assert parse_retry_after({"retry-after": "Thu, 01 Jan 2099 00:00:00 GMT"}) is None  # > a day
    assert parse_retry_after({"retry-after": "Thu, 01 Jan 2015 00:00:00 GMT"}) == 0.0
