"""Health, metrics and result files."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from imagestudio.api.deps import ServicesDep
from imagestudio.errors import StorageError
from imagestudio.storage.local import LocalStorage

router = APIRouter()

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


@router.get("/healthz")
async def healthz(request: Request, services: ServicesDep) -> dict[str, str]:
    """200 when the service can take jobs: the database answers and, if this process runs
    workers, their loop is alive (a dead loop would leave accepted jobs queued)."""
    loop = request.app.state.worker_loop
    if loop is not None and loop.done():
        raise HTTPException(503, "the in-process worker loop has stopped")
    try:
        async with services.store.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise HTTPException(503, "database unreachable") from exc
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    store = services.store
    services.metrics.refresh(await store.queue_depth(), await store.governor_states())
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/files/{key:path}")
async def result_file(services: ServicesDep, key: str) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalStorage):
        raise HTTPException(404, "results are served by the storage bucket")
    try:
        path = storage.path_for(key)
    except StorageError as exc:
        raise HTTPException(404, "no such file") from exc
    if not path.is_file():
        raise HTTPException(404, "no such file")
    media = MEDIA_TYPES.get(path.suffix.lstrip(".").lower(), "application/octet-stream")
    return FileResponse(
        path, media_type=media, headers={"Cache-Control": "public, max-age=31536000, immutable"}
    )
