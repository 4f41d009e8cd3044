"""Result files: whatever the storage says a key is served as (a file here, or a redirect to
a bucket). The route does not know which storage it talks to."""

from __future__ import annotations

from typing import Annotated, assert_never

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, RedirectResponse, Response

from imagestudio.api.deps import ServicesDep
from imagestudio.errors import StorageError
from imagestudio.storage import LocalFile, Redirect, ResultStorage, Served

router = APIRouter()

# Result keys name one attempt each (``...-a<fence>.<ext>``) and are never rewritten.
IMMUTABLE = "public, max-age=31536000, immutable"


def get_storage(services: ServicesDep) -> ResultStorage:
    return services.storage


StorageDep = Annotated[ResultStorage, Depends(get_storage)]


@router.get("/files/{key:path}")
async def result_file(storage: StorageDep, key: str) -> Response:
    try:
        served = await storage.serve(key)
    except StorageError as exc:
        raise HTTPException(404, "no such file") from exc
    return answer(served)


def answer(served: Served) -> Response:
    """The HTTP answer for what the storage said."""
    if isinstance(served, LocalFile):
        return FileResponse(
            served.path, media_type=served.media_type, headers={"Cache-Control": IMMUTABLE}
        )
    if isinstance(served, Redirect):
        cache = f"private, max-age={served.max_age}" if served.max_age > 0 else "no-store"
        return RedirectResponse(served.url, status_code=307, headers={"Cache-Control": cache})
    assert_never(served)
