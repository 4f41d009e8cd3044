"""SSRF-safe download of source images, through the one guarded HTTP path.

``security.http.Outbound`` checks every address it connects to (so DNS rebinding cannot win),
follows at most 3 redirects (each hop re-checked), reads under a byte cap (a Content-Length
over the cap is refused before reading) and runs the whole download, redirects included,
under one deadline.

Errors are mapped at this boundary: 4xx -> ``SourceNotFound``; 5xx, connection and read errors
and timeouts -> ``SourceUnavailable``; over the cap -> ``SourceTooLarge``; a refused scheme or
address -> ``UnsafeURL``; bytes that are not an image -> ``BadImage``.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx

from imagestudio.domain import SourceFile
from imagestudio.errors import (
    AnswerTooLarge,
    DeadlineExceeded,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
)
from imagestudio.imaging.process import sniff, with_extension
from imagestudio.security.http import MAX_REDIRECTS, Answer, Outbound

_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def filename_from_url(url: str, ext: str | None = None) -> str:
    """The last path segment of ``url``, made safe; ``source`` when there is none.

    With ``ext``, the name ends in that extension (replacing a different one).
    """
    raw = unquote(PurePosixPath(urlsplit(url).path).name)
    name = "".join(c if c in _SAFE_NAME_CHARS else "_" for c in raw).strip("._") or "source"
    return name if ext is None else with_extension(name, ext)


class SourceFetcher:
    """Downloads source images through the guarded path, under a byte cap and a deadline."""

    def __init__(
        self,
        outbound: Outbound,
        *,
        max_bytes: int,
        timeout: float,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self._outbound = outbound
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._max_redirects = max_redirects

    async def fetch(self, url: str) -> SourceFile:
        """Download ``url`` and return its bytes, a filename and the sniffed MIME type."""
        try:
            answer = await self._outbound.request(
                "GET",
                url,
                max_bytes=self._max_bytes,
                deadline=self._timeout,
                max_redirects=self._max_redirects,
            )
        except AnswerTooLarge as exc:
            raise SourceTooLarge(f"source {url}: {exc.message}") from exc
        except DeadlineExceeded as exc:
            raise SourceUnavailable(f"source {url} timed out after {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"source {url} failed: {exc!r}") from exc
        _check_status(answer, url, self._max_redirects)
        mime, ext = sniff(answer.body)
        return SourceFile(data=answer.body, filename=filename_from_url(url, ext), mime=mime)


def _check_status(answer: Answer, url: str, max_redirects: int) -> None:
    status = answer.status
    if 200 <= status < 300:
        return
    if answer.is_redirect:
        if len(answer.redirects) >= max_redirects:
            raise SourceNotFound(f"source {url} redirected more than {max_redirects} times")
        raise SourceNotFound(f"source {url} answered HTTP {status} without a usable location")
    if status >= 500:
        raise SourceUnavailable(f"source {url} answered HTTP {status}")
    raise SourceNotFound(f"source {url} answered HTTP {status}")
