"""SSRF-safe download of source images.

Every hop is checked by ``netguard`` before it is requested: the client must be built with
``follow_redirects=False`` and redirects are followed here, up to ``max_redirects``. The body
is streamed under a byte cap (a Content-Length over the cap is refused before reading), and
the whole download, redirects included, runs under one timeout.

Errors are mapped at this boundary: 4xx -> ``SourceNotFound``; 5xx, connection and read errors
and timeouts -> ``SourceUnavailable``; over the cap -> ``SourceTooLarge``; a refused scheme or
address -> ``UnsafeURL``; bytes that are not an image -> ``BadImage``.

Known limit: the host is resolved for the check and again by the HTTP client, so a DNS server
that answers differently the second time (DNS rebinding) is not caught here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx

from imagestudio.domain import SourceFile
from imagestudio.errors import SourceNotFound, SourceTooLarge, SourceUnavailable
from imagestudio.imaging.process import sniff, with_extension
from imagestudio.security.netguard import AllowList, ensure_public_url

_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def filename_from_url(url: str, ext: str | None = None) -> str:
    """The last path segment of ``url``, made safe; ``source`` when there is none.

    With ``ext``, the name ends in that extension (replacing a different one).
    """
    raw = unquote(PurePosixPath(urlsplit(url).path).name)
    name = "".join(c if c in _SAFE_NAME_CHARS else "_" for c in raw).strip("._") or "source"
    return name if ext is None else with_extension(name, ext)


class SourceFetcher:
    """Downloads source images under the SSRF policy, a byte cap and a timeout."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        max_bytes: int,
        timeout: float,
        allow_list: Sequence[str],
        max_redirects: int = 5,
    ) -> None:
        self._client = client
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._allow = AllowList.parse(allow_list)
        self._max_redirects = max_redirects

    async def fetch(self, url: str) -> SourceFile:
        """Download ``url`` and return its bytes, a filename and the sniffed MIME type."""
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._follow(url)
        except TimeoutError as exc:
            raise SourceUnavailable(f"source {url} timed out after {self._timeout:g}s") from exc
        except httpx.TimeoutException as exc:
            raise SourceUnavailable(f"source {url} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"source {url} failed: {exc!r}") from exc
        mime, ext = sniff(data)
        return SourceFile(data=data, filename=filename_from_url(url, ext), mime=mime)

    async def _follow(self, url: str) -> bytes:
        current = url
        for _ in range(self._max_redirects + 1):
            await ensure_public_url(current, self._allow)
            request = self._client.build_request("GET", current, timeout=self._timeout)
            response = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                if response.is_redirect:
                    current = _redirect_target(response, current)
                    continue
                _check_status(response, current)
                return await self._read_capped(response, current)
            finally:
                await response.aclose()
        raise SourceNotFound(f"source {url} redirected more than {self._max_redirects} times")

    async def _read_capped(self, response: httpx.Response, url: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise SourceTooLarge(
                f"source {url} is {declared} bytes, over the cap of {self._max_bytes}"
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                raise SourceTooLarge(f"source {url} is over the cap of {self._max_bytes} bytes")
        return bytes(body)


def _redirect_target(response: httpx.Response, url: str) -> str:
    try:
        return str(response.url.join(response.headers["location"]))
    except httpx.InvalidURL as exc:
        raise SourceNotFound(f"source {url} redirected to an invalid URL: {exc}") from exc


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status >= 500:
        raise SourceUnavailable(f"source {url} answered HTTP {status}")
    raise SourceNotFound(f"source {url} answered HTTP {status}")
