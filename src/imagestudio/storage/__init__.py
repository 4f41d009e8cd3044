"""Result storage: a local folder by default, or an S3-compatible bucket (``s3://``).

``open_storage(url, s3=options)`` picks the implementation from ``IMAGESTUDIO_STORAGE_URL``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imagestudio.errors import StorageError
from imagestudio.storage.base import LocalFile, Redirect, ResultStorage, Served
from imagestudio.storage.local import LocalStorage
from imagestudio.storage.s3_url import S3Options, parse_s3_url

__all__ = [
    "LocalFile",
    "LocalStorage",
    "Redirect",
    "ResultStorage",
    "S3Options",
    "Served",
    "open_storage",
    "sweep",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_storage(url: str, *, s3: S3Options | None = None) -> ResultStorage:
    """A storage for ``url``: a plain path or ``file://`` URL is a local folder,
    ``s3://bucket/prefix`` a bucket reached with ``s3`` (the AWS settings)."""
    match = _SCHEME.match(url)
    if match is None:
        return LocalStorage(Path(url))
    scheme = match.group(1).lower()
    if scheme == "s3":
        from imagestudio.storage.s3 import S3Storage  # botocore loads only for a bucket

        return S3Storage(parse_s3_url(url), s3 or S3Options())
    if scheme != "file":
        raise StorageError(
            f"unsupported storage URL scheme {scheme!r}: use a path, file:// or s3://"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"file:// storage URL must be local, not on host {parts.netloc!r}")
    return LocalStorage(Path(unquote(parts.path)))


async def sweep(storage: ResultStorage, prefix: str, keep: Collection[str]) -> int:
    """Once a job has ended, delete every file under its ``prefix`` that is not in ``keep``
    (the images' recorded results): an attempt killed between storing and recording, or a
    half-written file. Returns how many were deleted."""
    removed = await storage.discard_partials(prefix)
    for key in await storage.list(prefix):
        if key not in keep:
            await storage.delete(key)
            removed += 1
    return removed
