"""``ImageProvider`` over the OpenAI images API (``images.edit`` / ``images.generate``).

Works with OpenAI and any compatible ``api_base`` (including our fake server). The SDK runs
with ``max_retries=0``: retrying is the scheduler's decision, not the SDK's. Every foreign
exception is mapped by ``error_map.map_provider_error`` before it leaves this module.

Every request goes through the guarded path (``security.http.Outbound``): the SDK gets its
``client()`` (no automatic redirects, so a 307 cannot re-POST the form; every address checked
at connect; the answer capped on the stream) and result URLs are downloaded with its
``request()``. The adapter builds its own from ``ProviderConfig.allow_list`` unless given one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import httpx
import httpx2
from openai import AsyncOpenAI

from imagestudio.errors import (
    AnswerTooLarge,
    ApiBaseRefused,
    DeadlineExceeded,
    NoImageReturned,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    UnsafeURL,
)
from imagestudio.providers.base import MAX_ANSWER_BYTES, ImageRequest, ImageResult, ProviderConfig
from imagestudio.providers.error_map import MAPPED_EXCEPTIONS, map_provider_error, scrub
from imagestudio.providers.retry_after import parse_rate_info
from imagestudio.security.http import MAX_REDIRECTS, Answer, Outbound, OutboundPolicy

HttpClient = httpx2.AsyncClient | httpx.AsyncClient
"""An injectable async client (tests): the SDK's own ``httpx2`` or a legacy ``httpx`` one. The
service never injects one: it gives the adapter its guarded ``Outbound``."""

MAX_DOWNLOAD_BYTES = MAX_ANSWER_BYTES
T = TypeVar("T")
_MB = 1024 * 1024
_MAGIC: tuple[bytes, ...] = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,([A-Za-z0-9+/=\s_-]+)", re.IGNORECASE)


def looks_like_image(data: bytes) -> bool:
    """True if the bytes start like a PNG, JPEG, GIF or WebP file."""
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return is_webp or any(data.startswith(magic) for magic in _MAGIC)


def decode_b64_image(text: object) -> bytes:
    """The image in a base64 string, or ``NoImageReturned``."""
    if not isinstance(text, str):
        name = type(text).__name__
        kind = "null" if text is None else ("an " if name[0] in "aeiou" else "a ") + name
        raise NoImageReturned(f"provider answered 200 with b64_json as {kind}, not a string")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoImageReturned("provider answer holds invalid base64 image data") from exc
    if not looks_like_image(data):
        raise NoImageReturned("provider answer is not a PNG, JPEG, GIF or WebP image")
    return data


def decode_data_url(url: str) -> bytes | None:
    """The image in a ``data:image/...;base64,`` URL; None if ``url`` is not one."""
    match = _DATA_URL.fullmatch(url.strip())
    return decode_b64_image(match.group(1)) if match else None


class OpenAIClientBase:
    """Builds the SDK client over the guarded path (its own, or a borrowed ``outbound``)."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        http_client: HttpClient | None = None,
        outbound: Outbound | None = None,
    ) -> None:
        self.config = config
        self.max_answer_bytes = config.max_answer_bytes  # tests lower it on an instance
        self._owns_outbound = outbound is None
        self._outbound = outbound or Outbound(
            OutboundPolicy.of(config.allow_list),
            max_bytes=config.max_answer_bytes,
            deadline=config.timeout_seconds,
        )
        self._owns_http = http_client is None
        self._http: HttpClient = http_client or self._outbound.client(
            deadline=config.timeout_seconds, max_bytes=config.max_answer_bytes
        )
        self._client = AsyncOpenAI(
            api_key=config.api_key,
            base_url=config.api_base,
            max_retries=0,
            timeout=config.timeout_seconds,
            # The SDK accepts legacy httpx clients at runtime; its annotation names httpx2 only.
            http_client=cast(httpx2.AsyncClient, self._http),
        )

    async def generate(self, request: ImageRequest) -> ImageResult:
        """One image; every failure leaves as one of our ``ProviderError`` classes (or
        ``UnsafeURL`` when the guarded path refuses an address).

        ``timeout_seconds`` bounds the whole call (the SDK's timeout is per read, so an
        answer drip-fed a few bytes at a time would never time out); the guarded transport
        holds each request to it as well.
        """
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                return await self._generate(request)
        except (ProviderError, UnsafeURL):
            raise
        except AnswerTooLarge as exc:
            raise NoImageReturned(f"provider's {exc.message}") from exc
        except DeadlineExceeded as exc:
            raise self._timed_out() from exc
        except MAPPED_EXCEPTIONS as exc:
            raise self._mapped(exc) from exc

    async def _sdk(self, call: Awaitable[T]) -> T:
        """An SDK call: a refused connection there is the ``api_base``'s, job-wide."""
        try:
            return await call
        except UnsafeURL as exc:
            message = self._scrub(f"refused to connect to the provider's api_base: {exc}")
            raise ApiBaseRefused(message) from exc

    def _timed_out(self) -> ProviderTimeout:
        limit = self.config.timeout_seconds
        return ProviderTimeout(f"provider did not answer within {limit:g} s", sent=True)

    async def _generate(self, request: ImageRequest) -> ImageResult:
        raise NotImplementedError

    def _mapped(self, exc: BaseException) -> ProviderError:
        return map_provider_error(
            exc, secrets=[self.config.api_key], timeout=self.config.timeout_seconds
        )

    def _scrub(self, text: str) -> str:
        return scrub(text, [self.config.api_key])

    def parsed(self, raw: Any) -> Any:
        """The answer of a raw SDK response, or ``NoImageReturned`` naming what is wrong with
        it: too large, malformed JSON, or not JSON at all (the SDK gives those as a str)."""
        http, status = raw.http_response, raw.status_code
        size = len(http.content)
        if size > self.max_answer_bytes:
            raise NoImageReturned(
                f"provider answered {status} with {size / _MB:.1f} MB, "
                f"over the {self.max_answer_bytes / _MB:.1f} MB cap"
            )
        try:
            result = raw.parse()
        except ValueError as exc:
            start = http.text[:60]
            raise NoImageReturned(
                self._scrub(f"provider answered {status} with malformed JSON: {exc}: {start!r}")
            ) from exc
        if isinstance(result, str):
            kind = http.headers.get("content-type", "no content type")
            raise NoImageReturned(
                self._scrub(f"provider answered {status} with {kind}, not JSON: {result[:60]!r}")
            )
        return result

    async def download(self, url: str) -> bytes:
        """Fetch an image URL the provider answered with, through the guarded path (every
        address checked, at most 3 redirects, capped in size and time)."""
        if not url.startswith(("http://", "https://")):
            raise NoImageReturned(scrub(f"provider answered an unusable image URL: {url[:80]}"))
        try:
            answer = await self._outbound.request(
                "GET", url, max_bytes=MAX_DOWNLOAD_BYTES, deadline=self.config.timeout_seconds
            )
        except UnsafeURL as exc:
            raise UnsafeURL(
                self._scrub(f"provider answered an image URL we refuse: {exc}")
            ) from exc
        except AnswerTooLarge as exc:
            raise NoImageReturned(f"provider image URL's {exc.message}") from exc
        _check_download(answer)
        if not looks_like_image(answer.body):
            raise NoImageReturned("provider image URL did not hold an image")
        return answer.body

    async def aclose(self) -> None:
        """Close what this adapter created (an injected client or outbound is the caller's)."""
        if self._owns_http:
            await self._client.close()
        if self._owns_outbound:
            await self._outbound.aclose()


def _check_download(answer: Answer) -> None:
    """An image URL that answered an error: 5xx is transient, anything else is no image."""
    status = answer.status
    if answer.is_redirect and len(answer.redirects) >= MAX_REDIRECTS:
        raise NoImageReturned(
            f"provider image URL redirected more than {MAX_REDIRECTS} times", status_code=status
        )
    if status >= 500:
        raise ProviderUnavailable(f"provider image URL answered {status}", status_code=status)
    if status >= 300:
        raise NoImageReturned(f"provider image URL answered {status}", status_code=status)


def _family(model: str) -> str:
    return model.lower().rsplit("/", 1)[-1]


def image_params(request: ImageRequest) -> dict[str, Any]:
    """The keyword arguments for ``images.edit``/``images.generate`` (pure).

    ``gpt-image-*`` never gets ``response_format`` (OpenAI rejects it); ``dall-e-*`` asks for
    ``b64_json``; other compatible models get the defaults and may answer with a URL.
    """
    params: dict[str, Any] = {
        "prompt": request.prompt,
        "model": request.model,
        "size": request.size,
        "n": 1,
    }
    if _family(request.model).startswith("dall-e"):
        params["response_format"] = "b64_json"
    return params


class OpenAIImagesProvider(OpenAIClientBase):
    """``images.edit`` with the source image, ``images.generate`` without one."""

    async def _generate(self, request: ImageRequest) -> ImageResult:
        params = image_params(request)
        source = request.source
        images = self._client.images.with_raw_response  # the headers carry rate limits
        if source is not None:
            image = (source.filename, source.data, source.mime)
            raw = await self._sdk(images.edit(image=image, **params))
        else:
            raw = await self._sdk(images.generate(**params))
        data = getattr(self.parsed(raw), "data", None)
        if data is None:
            raise NoImageReturned("provider answered 200 without a data list")
        if not isinstance(data, list):
            raise NoImageReturned(f"provider answered 200 with data as a {type(data).__name__}")
        if not data:
            raise NoImageReturned("provider answered 200 with an empty data list (no image)")
        return ImageResult(await self._first_image(data), parse_rate_info(raw.headers))

    async def _first_image(self, data: list[Any]) -> bytes:
        for item in data:
            b64, url = getattr(item, "b64_json", None), getattr(item, "url", None)
            if b64 is not None:
                return decode_b64_image(b64)
            if isinstance(url, str) and url:
                return decode_data_url(url) or await self.download(url)
        raise NoImageReturned("provider answered 200 without an image (no b64_json or url)")
