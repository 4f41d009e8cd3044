"""The one guarded HTTP path for every outbound request: sources, provider calls (the
``openai`` SDK's own requests included), provider result URLs and webhooks.

    Outbound.request()  ── our redirects: re-checked hop by hop, at most 3, a body never
        │                  re-sent to another origin (``redirect_step``, pure)
    GuardedClient        ── an ``httpx.AsyncClient`` that never follows redirects by itself
        │                  and ignores proxy settings (a proxy would be checked, not the host)
    GuardedTransport     ── a total deadline per request (connect, send, answer, body) and a
        │                  byte cap counted on the stream (a declared Content-Length over the
        │                  cap is refused before reading)
    GuardedBackend       ── resolves the name once, checks every address with ``netguard``
                           (port-aware allow-list), connects to a checked address; TLS SNI
                           and the Host header keep the name, so DNS rebinding cannot win

The SDK gets ``Outbound.client()`` as its ``http_client``: its requests go through the same
transport, and since the client never follows redirects a provider's 307 cannot make it
re-POST the form anywhere. Refusals raise ``UnsafeURL``; the limits raise ``AnswerTooLarge``
and ``DeadlineExceeded`` (``errors.OutboundLimit``), which each caller maps to its own words.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from imagestudio.errors import AnswerTooLarge, UnsafeURL
from imagestudio.security.limits import CappedStream, Deadline, size_text
from imagestudio.security.netguard import (
    AllowList,
    Resolver,
    checked_addresses,
    host_and_port,
    system_resolve,
)

MAX_REDIRECTS = 3
MAX_BYTES_KEY = "imagestudio.max_bytes"  # per-request overrides, in httpx request extensions
DEADLINE_KEY = "imagestudio.deadline"
_MB = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = ("authorization", "cookie", "proxy-authorization")
# One pool for the whole process (sources, every provider client): the SDK's own defaults.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Where outbound requests may go, and how names are resolved (injectable for tests)."""

    allow: AllowList = field(default_factory=lambda: AllowList.parse(()))
    resolver: Resolver = system_resolve

    @classmethod
    def of(cls, allow_list: Iterable[str], resolver: Resolver | None = None) -> OutboundPolicy:
        return cls(AllowList.parse(allow_list), resolver or system_resolve)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses ``netguard`` allows, resolving each name exactly once."""

    def __init__(
        self, policy: OutboundPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self._policy.allow, self._policy.resolver)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # checked_addresses never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        del timeout, socket_options
        raise UnsafeURL(f"refused a Unix socket connection to {path!r}")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over ``GuardedBackend``, with a deadline and a byte cap per request
    (the defaults here; a request may lower or raise them with its extensions)."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        max_bytes: int,
        deadline: float,
        limits: httpx.Limits = LIMITS,
        ssl_context: ssl.SSLContext | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        self.max_bytes, self.deadline = max_bytes, deadline
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, backend),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host_and_port(str(request.url))  # the scheme and host, before anything is sent
        limit = int(request.extensions.get(MAX_BYTES_KEY, self.max_bytes))
        deadline = Deadline.start(float(request.extensions.get(DEADLINE_KEY, self.deadline)))
        async with deadline.bound():
            response = await super().handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await response.aclose()
            raise AnswerTooLarge(
                f"answer of {size_text(int(declared))} declared, "
                f"over the cap of {size_text(limit)}",
                limit=limit,
            )
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = CappedStream(response.stream, limit, deadline)
        return response


class GuardedClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that never follows a redirect on its own, whatever a caller
    (the SDK) asks: redirects are ``Outbound.request``'s to follow, re-checked."""

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        kwargs["follow_redirects"] = False
        return await super().send(request, **kwargs)


@dataclass(frozen=True, slots=True)
class Hop:
    """Where a redirect leads and what is sent there."""

    url: str
    method: str
    keep_body: bool
    keep_credentials: bool


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def redirect_step(method: str, status: int, url: str, location: str, *, body: bool) -> Hop | None:
    """The next hop of a redirect, or None when it must not be followed (pure).

    GET and HEAD follow every redirect status. A request with a body follows only a 307 or
    308 to the same origin (scheme, host and port), with its body: it is never re-sent to
    another host, and never silently turned into a GET. Credentials (Authorization, cookies)
    go to the same origin only.
    """
    if status not in _REDIRECTS:
        return None
    try:
        target = httpx.URL(url).join(location)
    except httpx.InvalidURL:
        return None
    same = _origin(target) == _origin(httpx.URL(url))
    if method.upper() in ("GET", "HEAD") and not body:
        return Hop(str(target), method.upper(), keep_body=False, keep_credentials=same)
    if status in (307, 308) and same:
        return Hop(str(target), method.upper(), keep_body=True, keep_credentials=True)
    return None


@dataclass(frozen=True, slots=True)
class Answer:
    """A finished exchange: the final status, headers, URL and body, and the URLs it went
    through (``redirects``). A redirect not followed is an answer with its 3xx status."""

    status: int
    headers: Mapping[str, str]
    url: str
    body: bytes
    redirects: tuple[str, ...] = ()

    @property
    def is_redirect(self) -> bool:
        return self.status in _REDIRECTS


class Outbound:
    """The guarded path of one process: one connection pool, one policy.

    ``request`` is for our own requests (sources, result URLs, webhooks); ``client`` is the
    ``httpx.AsyncClient`` to give the provider SDK. Both go through ``GuardedTransport``.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        max_bytes: int = 64 * _MB,
        deadline: float = 30.0,
        backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self.transport = GuardedTransport(
            policy,
            max_bytes=max_bytes,
            deadline=deadline,
            backend=backend,
            ssl_context=ssl_context,
        )
        self._client = self.client()

    def client(
        self, *, deadline: float | None = None, max_bytes: int | None = None
    ) -> GuardedClient:
        """A client over the shared guarded transport (closing it leaves the pool open), its
        requests held to ``deadline`` and ``max_bytes`` unless they say otherwise."""
        seconds = deadline or self.transport.deadline
        defaults = {DEADLINE_KEY: seconds, MAX_BYTES_KEY: max_bytes or self.transport.max_bytes}
        return GuardedClient(
            transport=_Borrowed(self.transport, defaults),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(seconds),
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        deadline: float | None = None,
        max_redirects: int = MAX_REDIRECTS,
    ) -> Answer:
        """One request under the policy, ``deadline`` seconds in all (redirects included),
        the body read under ``max_bytes``; redirects followed by ``redirect_step``."""
        seconds = deadline or self.transport.deadline
        async with Deadline.start(seconds).bound():
            return await self._follow(
                method, url, content, dict(headers or {}), max_bytes, seconds, max_redirects
            )

    async def _follow(
        self,
        method: str,
        url: str,
        content: bytes | None,
        headers: dict[str, str],
        max_bytes: int | None,
        seconds: float,
        max_redirects: int,
    ) -> Answer:
        extensions: dict[str, Any] = {DEADLINE_KEY: seconds}
        if max_bytes is not None:
            extensions[MAX_BYTES_KEY] = max_bytes
        seen: list[str] = []
        while True:
            host_and_port(url)  # every hop: http(s) with a host, or UnsafeURL
            request = self._client.build_request(
                method, url, content=content, headers=headers, extensions=extensions
            )
            response = await self._client.send(request, stream=True)
            try:
                hop = None
                if len(seen) < max_redirects and response.is_redirect:
                    location = response.headers.get("location", "")
                    hop = redirect_step(
                        method, response.status_code, url, location, body=bool(content)
                    )
                if hop is None:
                    body = await response.aread()
                    return Answer(response.status_code, response.headers, url, body, tuple(seen))
            finally:
                await response.aclose()
            seen.append(url)
            url, method = hop.url, hop.method
            content = content if hop.keep_body else None
            if not hop.keep_credentials:
                headers = _without_credentials(headers)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self.transport.aclose()


def _without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}


class _Borrowed(httpx.AsyncBaseTransport):
    """The shared transport, lent to a client: closing the client does not close the pool."""

    def __init__(self, transport: GuardedTransport, defaults: Mapping[str, Any]) -> None:
        self._transport, self._defaults = transport, dict(defaults)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**self._defaults, **request.extensions}
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        return None


WEBHOOK_MAX_BYTES = 64 * 1024  # a receiver's answer is read, not kept: a small cap
WEBHOOK_DEADLINE = 10.0


async def send_webhook(
    outbound: Outbound,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    deadline: float = WEBHOOK_DEADLINE,
) -> Answer:
    """POST one webhook delivery through the guarded path and return the receiver's answer.

    The receiver's address is checked at connect like every other (a webhook URL is user
    input), its answer is capped at ``WEBHOOK_MAX_BYTES`` and the whole exchange at
    ``deadline`` seconds. A redirect is followed only when it is a 307/308 to the same origin;
    any other comes back as the answer (a 3xx), the body never re-sent to another host.
    Raises ``UnsafeURL``, ``AnswerTooLarge``, ``DeadlineExceeded`` or an ``httpx.HTTPError``.
    """
    return await outbound.request(
        "POST",
        url,
        content=body,
        headers={"content-type": "application/json", **headers},
        max_bytes=WEBHOOK_MAX_BYTES,
        deadline=deadline,
    )
