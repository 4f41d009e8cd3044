"""The storage interface for result images.

Keys are relative, slash-separated paths such as ``jobs/<job>/<sku>/<stem>.png``; each segment
is made of ``A-Z a-z 0-9 . _ -`` and does not start with a dot. Implementations raise
``imagestudio.errors.StorageError`` for invalid keys and failed reads or writes.
"""

from __future__ import annotations

from typing import Protocol


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
