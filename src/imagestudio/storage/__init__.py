"""Result storage: a local folder by default; S3-compatible buckets later.

``open_storage(url)`` picks the implementation from ``IMAGESTUDIO_STORAGE_URL``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imagestudio.errors import StorageError
from imagestudio.storage.base import ResultStorage
from imagestudio.storage.local import LocalStorage

__all__ = ["LocalStorage", "ResultStorage", "open_storage"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_storage(url: str) -> ResultStorage:
    """A storage for ``url``: a plain path or ``file://`` URL is a local folder."""
    match = _SCHEME.match(url)
    if match is None:
        return LocalStorage(Path(url))
    scheme = match.group(1).lower()
    if scheme == "s3":
        raise StorageError("s3 storage is not available in this build yet")
    if scheme != "file":
        raise StorageError(f"unsupported storage URL scheme {scheme!r}: use a path or file://")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"file:// storage URL must be local, not on host {parts.netloc!r}")
    return LocalStorage(Path(unquote(parts.path)))
