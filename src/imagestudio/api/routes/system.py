"""Health and metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from imagestudio.api.deps import MetricsAccessDep, ServicesDep

router = APIRouter()


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
async def metrics(services: ServicesDep, _access: MetricsAccessDep) -> Response:
    store = services.store
    services.metrics.refresh(await store.queue_depth(), await store.governor_states())
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
