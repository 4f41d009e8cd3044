"""How long a provider asked us to wait, read from its response headers (pure).

OpenAI-style servers say it several ways at once: ``retry-after-ms`` (milliseconds),
``retry-after`` (seconds or an HTTP date), and per limit ``x-ratelimit-remaining-<limit>`` with
``x-ratelimit-reset-<limit>`` for ``requests`` and ``tokens`` (Go-style durations such as
``1s``, ``250ms``, ``6m0s``, ``1h2m3.5s``). What each is trusted for:

- ``retry-after-ms`` / ``retry-after`` are the server's answer to "when may I retry?": when
  present (and sensible) they win. They are one value at two precisions: the millisecond one
  is used when both are there, so a 250 ms wait is not rounded up to RFC 9110's whole second.
- ``x-ratelimit-reset-<limit>`` says when *that* limit's window refills, which matters only
  when that limit is the one exhausted: it counts only when ``x-ratelimit-remaining-<limit>``
  is 0. OpenAI sends ``retry-after: 1`` beside ``x-ratelimit-reset-tokens: 6m0s`` with tokens
  to spare; taking the largest value there stopped a key for six minutes on a one-second wait.
  A reset without its remaining count says nothing about being exhausted and is ignored.
- Other shapes, by the same rule (a reset counts when its remaining is 0): the IETF draft's
  ``ratelimit-remaining``/``ratelimit-reset`` (seconds to wait), and un-suffixed
  ``x-ratelimit-remaining``/``x-ratelimit-reset`` where the reset is seconds, a duration or,
  when it is larger than ``EPOCH_FLOOR``, a unix time (as GitHub-style relays send it).
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
EPOCH_FLOOR = 1e9  # a reset above this many seconds is a unix time (2001-09-09 onwards)

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


def _explicit(lower: Mapping[str, str], now: float) -> tuple[float, str] | None:
    """``retry-after-ms``, else ``retry-after``: the server's own "retry in", with its name."""
    millis = _float(lower["retry-after-ms"].strip()) if "retry-after-ms" in lower else None
    if millis is not None and millis >= 0:
        return millis / 1000.0, "retry-after-ms"
    if "retry-after" in lower:
        seconds = _retry_after(lower["retry-after"], now)
        return None if seconds is None else (seconds, "retry-after")
    return None


_RESET_PAIRS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ("ratelimit-remaining", "ratelimit-reset"),
    ("x-ratelimit-remaining", "x-ratelimit-reset"),
)


def _reset_seconds(text: str, now: float) -> float | None:
    seconds = parse_duration(text)
    if seconds is not None and seconds > EPOCH_FLOOR:
        return max(0.0, seconds - now)
    return seconds


def _exhausted_resets(lower: Mapping[str, str], now: float) -> list[tuple[float, str]]:
    """The reset of every limit whose remaining count is 0, with the reset header's name."""
    resets: list[tuple[float, str]] = []
    for remaining_name, reset_name in _RESET_PAIRS:
        remaining = _int(lower.get(remaining_name))
        reset = lower.get(reset_name)
        if remaining == 0 and reset is not None:
            seconds = _reset_seconds(reset, now)
            if seconds is not None:
                resets.append((seconds, reset_name))
    return resets


def _sensible(wait: float | None) -> bool:
    return wait is not None and 0.0 <= wait <= MAX_SENSIBLE_WAIT


def parse_wait(headers: Mapping[str, str], now: float | None = None) -> tuple[float, str] | None:
    """Seconds the headers ask us to wait and the header that said so, or None.

    ``retry-after(-ms)`` wins when present; else the longest reset of an exhausted limit
    (its cause names the reset header, e.g. ``x-ratelimit-reset-requests``). ``now`` (unix
    seconds) is only used for an HTTP-date ``retry-after`` and epoch resets. Negative,
    infinite or absurd (more than a day) values are ignored.
    """
    lower = {key.lower(): value for key, value in headers.items()}
    now = time.time() if now is None else now
    explicit = _explicit(lower, now)
    if explicit is not None and _sensible(explicit[0]):
        return explicit
    resets = [r for r in _exhausted_resets(lower, now) if _sensible(r[0])]
    return max(resets) if resets else None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the headers ask us to wait (``parse_wait`` without the cause)."""
    wait = parse_wait(headers, now)
    return None if wait is None else wait[0]


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    value = _float(text)
    return int(value) if value is not None and value >= 0 else None


def parse_rate_info(headers: Mapping[str, str]) -> RateInfo | None:
    """The ``x-ratelimit-{limit,remaining,reset}-requests`` headers (else the IETF draft's
    ``ratelimit-*``, else un-suffixed ``x-ratelimit-*``), or None without any."""
    lowered = {k.lower(): v for k, v in headers.items()}
    prefix = next(
        (p for p in ("x-ratelimit-{}-requests", "ratelimit-{}") if p.format("limit") in lowered),
        "x-ratelimit-{}",
    )
    if prefix == "x-ratelimit-{}" and "x-ratelimit-remaining-requests" in lowered:
        prefix = "x-ratelimit-{}-requests"
    limit = _int(lowered.get(prefix.format("limit")))
    remaining = _int(lowered.get(prefix.format("remaining")))
    reset_text = lowered.get(prefix.format("reset"))
    reset = _reset_seconds(reset_text, time.time()) if reset_text else None
    if limit is None and remaining is None and reset is None:
        return None
    return RateInfo(limit_requests=limit, remaining_requests=remaining, reset_requests=reset)
