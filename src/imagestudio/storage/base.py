"""The storage interface for result images, and how a stored result is served.

Keys are relative, slash-separated paths such as ``jobs/<job>/<sku>/<stem>.png``; each segment
is made of ``A-Z a-z 0-9 . _ -`` and does not start with a dot. Implementations raise
``imagestudio.errors.StorageError`` for invalid keys and failed reads or writes.

Two questions only the storage can answer, so that nothing above it looks at its type:

- ``public_url(key)``: a stable address the result can be fetched at without the API (a
  public bucket or CDN), or ``None``: then the result URL recorded per image is the API's
  files route, ``<files_url>/<key>``.
- ``serve(key)``: what the files route answers for ``key``: a ``LocalFile`` it sends, or a
  ``Redirect`` (a bucket's presigned or public URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LocalFile:
    """Send this file: the storage holds the result on this machine."""

    path: Path
    media_type: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the client to ``url``. ``max_age`` is how long the redirect itself may be cached
    (0: not at all, for presigned URLs that expire)."""

    url: str
    max_age: int = 0


Served = LocalFile | Redirect


class ResultStorage(Protocol):
    """Where result images are written and read back."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write ``data`` under ``key`` atomically, replacing what was there."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; ``StorageError`` when there are none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``, sorted."""
        ...

    async def discard_partials(self, prefix: str) -> int:
        """Remove unfinished writes (a writer killed mid-write) under ``prefix``; how many."""
        ...

    def public_url(self, key: str) -> str | None:
        """A stable URL ``key`` is reachable at without the API, or ``None`` (served through
        the API's files route). Recorded as the image's result URL, so it must not expire."""
        ...

    async def serve(self, key: str) -> Served:
        """How to answer a request for ``key``. ``StorageError`` for an invalid key and for a
        missing one (a bucket may ask with a HEAD request, or leave its 404 to the redirect)."""
        ...

    async def check(self) -> None:
        """``StorageError`` unless results can be stored now (readiness: the folder is
        there, the bucket answers)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the storage is not used afterwards."""
        ...
