"""Map ``openai``/``httpx`` exceptions into ``imagestudio.errors`` at the adapter boundary.

Adapters do ``raise map_provider_error(exc, secrets=[api_key]) from exc``; nothing above them
sees a foreign exception type. Messages are scrubbed: the configured key, anything shaped like
``sk-...`` and any ``Bearer`` token are replaced, because providers (and gateways) echo keys.

    RateLimitError 429           -> QuotaExhausted (insufficient_quota) | RateLimited(retry_after)
    APITimeoutError, timeouts    -> ProviderTimeout(sent=True)
    APIConnectionError, network  -> ProviderUnavailable
    401, 403                     -> AuthFailed
    400 content policy           -> ContentRejected
    400, 404, 422, other 4xx     -> ProviderBadRequest
    408                          -> ProviderTimeout
    409, 5xx                     -> ProviderUnavailable
    undecodable answer           -> NoImageReturned
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import httpx2
import openai

from imagestudio.domain import LimitKind
from imagestudio.errors import (
    AuthFailed,
    ContentRejected,
    NoImageReturned,
    ProviderBadRequest,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from imagestudio.providers.retry_after import parse_rate_info, parse_retry_after
from imagestudio.security.redact import redact

MAX_MESSAGE = 500

_CONTENT_CODES = frozenset(
    {"content_policy_violation", "moderation_blocked", "content_filter", "safety_violation"}
)
_SAFETY_WORDS = ("safety system", "content policy", "content_policy", "safety")

# Both the SDK's own transport (httpx2) and an injected legacy httpx client can raise.
_TIMEOUTS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
_STATUS_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPStatusError, httpx2.HTTPStatusError)
_NETWORK: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets (also base64- or URL-encoded), the process's known
    secrets, ``sk-...`` keys or bearer tokens (``security.redact``), cut to a length."""
    text = redact(text, secrets)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def is_content_rejection(code: str | None, message: str) -> bool:
    """True when a 400 is a content/safety refusal rather than a malformed request."""
    lowered = message.lower()
    return code in _CONTENT_CODES or any(word in lowered for word in _SAFETY_WORDS)


def error_fields(body: object) -> tuple[str | None, str | None, str]:
    """``(code, type, message)`` of an OpenAI-shaped error body (or its ``error`` member)."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None, None, "" if body is None else str(body)
    code, type_, message = body.get("code"), body.get("type"), body.get("message")
    return (
        None if code is None else str(code),
        None if type_ is None else str(type_),
        "" if message is None else str(message),
    )


def classify_status(
    status: int, code: str | None, type_: str | None, message: str
) -> type[ProviderError]:
    """The error class for an HTTP error answer (pure)."""
    if status == 429:
        quota = "insufficient_quota" in (code, type_)
        return QuotaExhausted if quota else RateLimited
    if status in (401, 403):
        return AuthFailed
    if status == 408:
        return ProviderTimeout
    if status == 409 or status >= 500:
        return ProviderUnavailable
    if status == 400 and is_content_rejection(code, message):
        return ContentRejected
    return ProviderBadRequest


_RATE_WORDS = re.compile(
    r"per min|per minute|per second|per day|\b[rit]p[msd]\b|requests per|tokens per|images per",
    re.IGNORECASE,
)
_CONCURRENCY_WORDS = re.compile(r"concurren|in flight|in-flight|parallel", re.IGNORECASE)


def limit_kind(message: str) -> LimitKind | None:
    """Which limit a 429's message says was hit (pure). OpenAI-style messages name it:
    "... on requests per min (RPM): Limit 5, Used 5" or "... on concurrent requests"."""
    if _CONCURRENCY_WORDS.search(message):
        return "concurrency"
    if _RATE_WORDS.search(message):
        return "requests"
    return None


def status_error(
    status: int,
    body: object,
    headers: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
) -> ProviderError:
    """Our exception for an HTTP error answer with this status, body and headers."""
    code, type_, detail = error_fields(body)
    cls = classify_status(status, code, type_, detail)
    suffix = f" ({code})" if code else ""
    message = scrub(f"provider answered {status}{suffix}: {detail or 'no details'}", secrets)
    if cls is RateLimited:
        return RateLimited(
            message,
            retry_after=parse_retry_after(headers),
            status_code=status,
            rate=parse_rate_info(headers),
            limit=limit_kind(detail),
        )
    if cls is ProviderTimeout:
        error = ProviderTimeout(message, sent=True)
        error.status_code = status
        return error
    return cls(message, status_code=status)


def _from_openai(exc: openai.OpenAIError, secrets: list[str]) -> ProviderError:
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.body, exc.response.headers, secrets=secrets)
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout("provider did not answer in time", sent=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return ProviderUnavailable(scrub(f"cannot reach provider: {cause!r}", secrets))
    if isinstance(exc, openai.APIResponseValidationError):
        return NoImageReturned(scrub(f"provider answer could not be read: {exc}", secrets))
    return ProviderUnavailable(scrub(f"provider client error: {exc}", secrets))


def _from_http(exc: Exception, secrets: list[str]) -> ProviderError:
    if isinstance(exc, _STATUS_ERRORS):
        response: Any = exc.response  # type: ignore[attr-defined]
        return status_error(
            response.status_code, _json_or_text(response), response.headers, secrets=secrets
        )
    if isinstance(exc, _TIMEOUTS):
        return ProviderTimeout(
            scrub(f"provider did not answer in time: {exc!r}", secrets), sent=True
        )
    return ProviderUnavailable(scrub(f"cannot reach provider: {exc!r}", secrets))


def _json_or_text(response: Any) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text


def map_provider_error(exc: BaseException, *, secrets: Iterable[str] = ()) -> ProviderError:
    """Our ``ProviderError`` for a foreign exception raised while calling a provider."""
    keys = list(secrets)
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.OpenAIError):
        return _from_openai(exc, keys)
    if isinstance(exc, _NETWORK):
        return _from_http(exc, keys)
    if isinstance(exc, (binascii.Error, ValueError)):
        return NoImageReturned(scrub(f"provider answer is not a valid image: {exc}", keys))
    return ProviderUnavailable(scrub(f"provider call failed: {exc!r}", keys))


MAPPED_EXCEPTIONS: tuple[type[Exception], ...] = (openai.OpenAIError, *_NETWORK, ValueError)
"""What adapters catch and pass to ``map_provider_error`` (``binascii.Error`` is a ValueError)."""
