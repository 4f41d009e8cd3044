"""Result files: whatever the storage says a key is served as (a file here, or a redirect to
a bucket). The route does not know which storage it talks to."""

from __future__ import annotations

from typing import Annotated, assert_never

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagestudio.api.deps import ServicesDep, SignerDep, get_user
from imagestudio.errors import StorageError
from imagestudio.storage import LocalFile, Redirect, ResultStorage, Served

router = APIRouter()

# Result keys name one attempt each (``...-a<fence>.<ext>``) and are never rewritten.
IMMUTABLE = "public, max-age=31536000, immutable"


def get_storage(services: ServicesDep) -> ResultStorage:
    return services.storage


StorageDep = Annotated[ResultStorage, Depends(get_storage)]


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


async def require_file_access(
    services: ServicesDep,
    signer: SignerDep,
    credentials: Credentials,
    key: str,
    expires: Annotated[str | None, Query(max_length=20)] = None,
    signature: Annotated[str | None, Query(max_length=64)] = None,
) -> None:
    """Local mode: open. With API tokens: a URL signed by the answers (``security.signing``),
    or the bearer token of the user whose job made the file; another user's file is a 404
    (as their job is)."""
    if signer is None or signer.verify(key, expires, signature):
        return
    user = get_user(services, credentials)  # 401 without a known token
    owner = await services.store.job_owner(key.split("/", 1)[0])
    if owner is None or owner != user:
        raise HTTPException(404, "no such file")


@router.get("/files/{key:path}", dependencies=[Depends(require_file_access)])
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
