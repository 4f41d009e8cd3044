"""Result storage in a local folder (the embedded default, served by the API).

Writes are atomic: the bytes go to a temporary file in the destination folder, are fsynced,
then ``os.replace``d over the key, so a reader never sees half a file. File I/O runs in a
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from pathlib import Path

from imagestudio.errors import StorageError
from imagestudio.storage.base import LocalFile, Served

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")
_TEMP_PREFIX = ".tmp-"


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``StorageError``."""
    segments = key.split("/")
    if not key or not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise StorageError(
            f"invalid storage key {key!r}: use relative segments of A-Z a-z 0-9 . _ -"
            " that do not start with a dot"
        )
    return key


def _validate_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix) or prefix.startswith("/") or ".." in prefix.split("/"):
        raise StorageError(f"invalid storage prefix {prefix!r}")
    return prefix


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_dir(path.parent)


def _list_keys(root: Path, prefix: str) -> list[str]:
    # Walk only the deepest folder the prefix names, not the whole tree.
    folder = root.joinpath(*prefix.split("/")[:-1])
    if not folder.is_dir():
        return []
    keys = []
    for path in folder.rglob("*"):
        if path.name.startswith(_TEMP_PREFIX) or not path.is_file():
            continue
        key = path.relative_to(root).as_posix()
        if key.startswith(prefix):
            keys.append(key)
    return sorted(keys)


def _discard_partials(root: Path, prefix: str) -> int:
    folder = root.joinpath(*prefix.split("/")[:-1])
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(f"{_TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def media_type(path: Path) -> str:
    """The MIME type of a result file, from its extension."""
    return MEDIA_TYPES.get(path.suffix.lstrip(".").lower(), "application/octet-stream")


class LocalStorage:
    """``ResultStorage`` in a folder: key ``a/b.png`` is the file ``root/a/b.png``, served by
    the API's files route (it has no address of its own)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (it may not exist)."""
        return self.root.joinpath(*validate_key(key).split("/"))

    async def discard_partials(self, prefix: str) -> int:
        _validate_prefix(prefix)
        return await asyncio.to_thread(_discard_partials, self.root, prefix)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            raise StorageError(f"cannot write {key!r} ({content_type}): {exc}") from exc

    async def get(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise StorageError(f"no stored result under {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {key!r}: {exc}") from exc

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key!r}: {exc}") from exc

    async def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        try:
            return await asyncio.to_thread(_list_keys, self.root, prefix)
        except OSError as exc:
            raise StorageError(f"cannot list {prefix!r}: {exc}") from exc

    def public_url(self, key: str) -> str | None:
        validate_key(key)
        return None

    async def serve(self, key: str) -> Served:
        path = self.path_for(key)
        if not await asyncio.to_thread(path.is_file):
            raise StorageError(f"no stored result under {key!r}")
        return LocalFile(path, media_type(path))

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
            writable = await asyncio.to_thread(os.access, self.root, os.W_OK | os.X_OK)
        except OSError as exc:
            raise StorageError(f"result folder {self.root} is not usable: {exc}") from exc
        if not writable:
            raise StorageError(f"result folder {self.root} is not writable")

    async def aclose(self) -> None:
        return None
