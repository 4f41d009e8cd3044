"""Every result of a job as one zip, streamed: ``GET /jobs/{job_id}/results.zip``.

The archive is written as it is sent (stored, not deflated: PNG, JPEG and WebP are compressed
already), one result read from storage at a time, so a 5,000-image job does not sit in memory.
Names are ``<sku>/<stem>.<ext>`` in payload order.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from imagestudio.api.deps import JobDep, ServicesDep
from imagestudio.domain import ImageStatus
from imagestudio.errors import StorageError

router = APIRouter(prefix="/jobs", tags=["jobs"])

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _Sink:
    """A write-only file for ``zipfile`` that hands out what was written since last asked."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def entry_name(sku: str, stem: str, key: str, seen: set[str]) -> str:
    """``<sku>/<stem>.<ext>``, made safe as a path and unique in the archive."""
    ext = posixpath.splitext(key)[1] or ".bin"
    base = f"{_UNSAFE.sub('_', sku) or 'sku'}/{_UNSAFE.sub('_', stem) or 'image'}"
    name, n = f"{base}{ext}", 1
    while name in seen:
        n += 1
        name = f"{base}-{n}{ext}"
    seen.add(name)
    return name


@router.get("/{job_id}/results.zip", response_class=StreamingResponse)
async def results_zip(services: ServicesDep, job: JobDep) -> StreamingResponse:
    """The job's succeeded results so far, as a zip."""
    images = [
        i
        for i in await services.store.images(job.id)
        if i.status == ImageStatus.SUCCEEDED.value and i.result_key
    ]
    storage = services.storage

    async def body() -> AsyncIterator[bytes]:
        sink = _Sink()
        seen: set[str] = set()
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
            for image in images:
                assert image.result_key is not None
                try:
                    data = await storage.get(image.result_key)
                except StorageError:
                    continue  # removed since: the archive holds what is there
                name = entry_name(image.sku, image.stem, image.result_key, seen)
                archive.writestr(name, data)
                yield sink.take()
        yield sink.take()

    filename = f"{_UNSAFE.sub('_', job.job_id)[:80]}-results.zip"
    return StreamingResponse(
        body(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
