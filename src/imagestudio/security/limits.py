"""The two limits of the guarded path: a total deadline per request and a byte cap counted
on the answer's stream (``security.http`` applies them; callers map the errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from imagestudio.errors import AnswerTooLarge, DeadlineExceeded

_MB = 1024 * 1024


def size_text(size: int) -> str:
    """``"812 bytes"`` under a megabyte, else ``"12.3 MB"``."""
    return f"{size} bytes" if size < _MB else f"{size / _MB:.1f} MB"


class CappedStream(httpx.AsyncByteStream):
    """An answer's body that stops at ``limit`` bytes and at the request's deadline."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int, deadline: Deadline) -> None:
        self._inner, self._limit, self._deadline = inner, limit, deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        chunks = self._inner.__aiter__()
        while True:
            try:
                async with self._deadline.bound():
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            size += len(chunk)
            if size > self._limit:
                raise AnswerTooLarge(
                    f"answer over the cap of {size_text(self._limit)} "
                    f"(stopped reading at {size} bytes)",
                    limit=self._limit,
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(slots=True)
class Deadline:
    """One request's total deadline, on the event loop's clock."""

    seconds: float
    at: float

    @classmethod
    def start(cls, seconds: float) -> Deadline:
        return cls(seconds, asyncio.get_running_loop().time() + seconds)

    def bound(self) -> DeadlineScope:
        return DeadlineScope(self)


class DeadlineScope:
    """``async with deadline.bound():`` raises ``DeadlineExceeded`` when the time is up."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline
        self._timeout = asyncio.timeout_at(deadline.at)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if not self._timeout.expired():
                raise
            limit = self._deadline.seconds
            raise DeadlineExceeded(
                f"not done within the total deadline of {limit:g} s", seconds=limit
            ) from None
