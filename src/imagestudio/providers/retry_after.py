"""How long a provider asked us to wait, read from its response headers (pure).

OpenAI-style servers say it several ways at once: ``retry-after-ms`` (milliseconds),
``retry-after`` (seconds or an HTTP date), and ``x-ratelimit-reset-requests`` /
``x-ratelimit-reset-tokens`` (Go-style durations such as ``1s``, ``250ms``, ``6m0s``,
``1h2m3.5s``). ``parse_retry_after`` reads them all and returns the largest sensible wait.

``retry-after-ms`` and ``retry-after`` are one value at two precisions: when both are present
the millisecond one is used, so that a 250 ms wait is not rounded up to the whole second that
RFC 9110 forces on ``retry-after``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from imagestudio.domain import RateInfo

# Waits longer than this are treated as garbage rather than advice.
MAX_SENSIBLE_WAIT = 24 * 3600.0

_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_DURATION_FULL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|us|µs|ns|h|m|s))+")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``1h2m3.5s``, ``20ms``); a bare number is seconds."""
    text = text.strip().lower()
    if not text:
        return None
    number = _float(text)
    if number is not None:
        return number
    if not _DURATION_FULL.fullmatch(text):
        return None
    return sum(float(value) * _UNIT_SECONDS[unit] for value, unit in _DURATION_PART.findall(text))


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _http_date(text: str, now: float) -> float | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _retry_after(text: str, now: float) -> float | None:
    seconds = _float(text.strip())
    return seconds if seconds is not None else _http_date(text, now)


def _candidates(headers: Mapping[str, str], now: float) -> list[float | None]:
    lower = {key.lower(): value for key, value in headers.items()}
    found: list[float | None] = []
    millis = _float(lower["retry-after-ms"].strip()) if "retry-after-ms" in lower else None
    if millis is not None and millis >= 0:
        found.append(millis / 1000.0)
    elif "retry-after" in lower:
        found.append(_retry_after(lower["retry-after"], now))
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if name in lower:
            found.append(parse_duration(lower[name]))
    return found


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The largest sensible wait in seconds the headers ask for, or None if they say nothing.

    ``now`` (unix seconds) is only used for an HTTP-date ``retry-after``. Negative, infinite or
    absurd (more than a day) values are ignored.
    """
    moment = time.time() if now is None else now
    waits = [
        wait
        for wait in _candidates(headers, moment)
        if wait is not None and 0.0 <= wait <= MAX_SENSIBLE_WAIT
    ]
    return max(waits) if waits else None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    value = _float(text)
    return int(value) if value is not None and value >= 0 else None


def parse_rate_info(headers: Mapping[str, str]) -> RateInfo | None:
    """The ``x-ratelimit-{limit,remaining,reset}-requests`` headers, or None without any."""
    lowered = {k.lower(): v for k, v in headers.items()}
    limit = _int(lowered.get("x-ratelimit-limit-requests"))
    remaining = _int(lowered.get("x-ratelimit-remaining-requests"))
    reset_text = lowered.get("x-ratelimit-reset-requests")
    reset = parse_duration(reset_text) if reset_text else None
    if limit is None and remaining is None and reset is None:
        return None
    return RateInfo(limit_requests=limit, remaining_requests=remaining, reset_requests=reset)
