"""Map ``openai``/``httpx`` exceptions into ``imagestudio.errors`` at the adapter boundary.

Adapters do ``raise map_provider_error(exc, secrets=[api_key]) from exc``; nothing above them
sees a foreign exception type. Messages are scrubbed: the configured key, anything shaped like
``sk-...`` and any ``Bearer`` token are replaced, because providers (and gateways) echo keys.

    RateLimitError 429           -> QuotaExhausted (insufficient_quota) | RateLimited(retry_after)
    read/write timeouts          -> ProviderTimeout(sent=True) "did not answer within N s"
    connect/pool timeouts        -> ProviderTimeout(sent=False) "could not connect within N s"
    peer closed / read error     -> ConnectionDropped(sent=True): the request was sent, the
                                    answer broke off (it may have been billed)
    refused, DNS, write error    -> ProviderUnavailable "cannot reach provider"
    401, 403                     -> AuthFailed, unless it came after a redirect to another
                                    host (the SDK drops the key there): ProviderBadRequest
    400 content policy           -> ContentRejected
    3xx (never followed: the     -> ProviderBadRequest "redirected (307) to ..., not followed"
    guarded client follows none)
    400, 404, 422, other 4xx     -> ProviderBadRequest
    408, 504                     -> ProviderTimeout(sent=True) (a gateway gave up waiting)
    409, 5xx                     -> ProviderUnavailable; with retry-after -> ProviderBusy
    undecodable answer           -> NoImageReturned

A status answer that came after redirects (an injected client that follows them; the service's
guarded client never does) says so ("after a 307 redirect to host:port").
HTML error pages are named by their title, not pasted whole.
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
    ConnectionDropped,
    ContentRejected,
    NoImageReturned,
    ProviderBadRequest,
    ProviderBusy,
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
_UNSENT_TIMEOUTS: tuple[type[Exception], ...] = (
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteTimeout,
    httpx2.ConnectTimeout,
    httpx2.PoolTimeout,
    httpx2.WriteTimeout,
)
# The request went out and the answer broke off: the provider may have done the work.
_DROPPED: tuple[type[Exception], ...] = (
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx2.RemoteProtocolError,
    httpx2.ReadError,
)
_TITLE = re.compile(r"<title>\s*([^<]{1,120}?)\s*</title>", re.IGNORECASE)


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
    if status in (408, 504):
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


def _detail(detail: str) -> str:
    """An HTML error page named by its title ("HTML page '502 Bad Gateway'"), else as is."""
    if "<html" not in detail[:200].lower():
        return detail or "no details"
    title = _TITLE.search(detail)
    return f"an HTML page {title.group(1)!r}" if title else "an HTML page"


def status_error(
    status: int,
    body: object,
    headers: Mapping[str, str],
    *,
    secrets: Iterable[str] = (),
    redirect: str = "",
) -> ProviderError:
    """Our exception for an HTTP error answer with this status, body and headers.

    ``redirect`` is how the answer was reached when redirects were followed ("after a 307
    redirect to host:port"), said in the message.
    """
    code, type_, detail = error_fields(body)
    cls = classify_status(status, code, type_, detail)
    suffix = f" ({code})" if code else ""
    where = f" {redirect}" if redirect else ""
    message = scrub(f"provider answered {status}{suffix}{where}: {_detail(detail)}", secrets)
    if 300 <= status < 400:
        location = headers.get("location", "nowhere")
        message = scrub(f"provider redirected ({status}) to {location}, not followed", secrets)
    if cls is RateLimited:
        return RateLimited(
            message,
            retry_after=parse_retry_after(headers),
            status_code=status,
            rate=parse_rate_info(headers),
            limit=limit_kind(detail),
        )
    return _other_status_error(cls, message, status, headers)


def _other_status_error(
    cls: type[ProviderError], message: str, status: int, headers: Mapping[str, str]
) -> ProviderError:
    if cls is ProviderTimeout:
        if status == 504:
            message += " (a gateway gave up waiting: the request may have been billed)"
        error = ProviderTimeout(message, sent=True)
        error.status_code = status
        return error
    if cls is ProviderUnavailable:
        wait = parse_retry_after(headers)
        if wait is not None:
            return ProviderBusy(
                f"{message} (retry after {wait:g} s)", retry_after=wait, status_code=status
            )
        return cls(message, status_code=status)
    return cls(message, status_code=status)


def _redirected(response: Any, secrets: list[str]) -> ProviderError | None:
    """What a status answer reached through redirects means (None: the answer itself)."""
    history = list(getattr(response, "history", None) or [])
    if not history:
        return None
    first_url, url = history[0].request.url, response.url
    hop = f"after a {history[0].status_code} redirect to {url.host}:{url.port}{url.path}"
    other_host = (first_url.host, first_url.port) != (url.host, url.port)
    if response.status_code in (401, 403) and other_host:
        return ProviderBadRequest(
            scrub(
                f"provider answered {response.status_code} {hop}: the redirect went to another "
                "host, which the API key is not sent to; check api_base",
                secrets,
            ),
            status_code=response.status_code,
        )
    return status_error(
        response.status_code,
        _json_or_text(response),
        response.headers,
        secrets=secrets,
        redirect=hop,
    )


def _from_openai(exc: openai.OpenAIError, secrets: list[str], timeout: str) -> ProviderError:
    if isinstance(exc, openai.APIStatusError):
        redirected = _redirected(exc.response, secrets)
        if redirected is not None:
            return redirected
        return status_error(exc.status_code, exc.body, exc.response.headers, secrets=secrets)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one
        return transport_error(exc.__cause__ or exc, secrets, timeout)
    if isinstance(exc, openai.APIResponseValidationError):
        return NoImageReturned(scrub(f"provider answer could not be read: {exc}", secrets))
    return ProviderUnavailable(scrub(f"provider client error: {exc}", secrets))


def transport_error(exc: BaseException, secrets: list[str], timeout: str = "") -> ProviderError:
    """Our error for a transport failure (``exc`` an httpx/httpx2 error, or the SDK's own)."""
    within = f" within {timeout}" if timeout else " in time"
    if isinstance(exc, _UNSENT_TIMEOUTS):
        stage = "send the request" if "Write" in type(exc).__name__ else "connect"
        return ProviderTimeout(f"could not {stage} to the provider{within}", sent=False)
    if isinstance(exc, (*_TIMEOUTS, openai.APITimeoutError)):
        return ProviderTimeout(f"provider did not answer{within}", sent=True)
    if isinstance(exc, _DROPPED):
        return ConnectionDropped(
            scrub(
                f"connection dropped after the request was sent (it may have been billed): {exc}",
                secrets,
            ),
            sent=True,
        )
    return ProviderUnavailable(scrub(f"cannot reach provider: {exc!r}", secrets))


def _from_http(exc: Exception, secrets: list[str], timeout: str) -> ProviderError:
    if isinstance(exc, _STATUS_ERRORS):
        response: Any = exc.response  # type: ignore[attr-defined]
        return status_error(
            response.status_code, _json_or_text(response), response.headers, secrets=secrets
        )
    return transport_error(exc, secrets, timeout)


def _json_or_text(response: Any) -> object:
    try:
        return response.json()
    except (ValueError, httpx.StreamError, httpx2.StreamError):
        try:
            return response.text
        except (httpx.StreamError, httpx2.StreamError):
            return ""


def map_provider_error(
    exc: BaseException, *, secrets: Iterable[str] = (), timeout: float | None = None
) -> ProviderError:
    """Our ``ProviderError`` for a foreign exception raised while calling a provider.

    ``timeout`` (seconds) is the client's limit, named in the messages of timeouts.
    """
    keys = list(secrets)
    limit = f"{timeout:g} s" if timeout is not None else ""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.OpenAIError):
        return _from_openai(exc, keys, limit)
    if isinstance(exc, _NETWORK):
        return _from_http(exc, keys, limit)
    if isinstance(exc, TimeoutError):  # the adapter's deadline over the whole call
        return ProviderTimeout(f"provider did not answer within {limit or 'the limit'}", sent=True)
    if isinstance(exc, (binascii.Error, ValueError)):
        return NoImageReturned(scrub(f"provider answer could not be read: {exc}", keys))
    return ProviderUnavailable(scrub(f"provider call failed: {exc!r}", keys))


MAPPED_EXCEPTIONS: tuple[type[Exception], ...] = (
    openai.OpenAIError,
    *_NETWORK,
    ValueError,
    TimeoutError,
)
"""What adapters catch and pass to ``map_provider_error`` (``binascii.Error`` is a ValueError)."""
