"""Health (liveness), readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from imagestudio.api.deps import MetricsAccessDep, ServicesDep
from imagestudio.runtime.readiness import readiness

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


@router.get("/readyz")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """200 when this process may get traffic: the database answers at the migrations' head,
    the result storage answers, and in-process workers (if any) run; else 503 with the
    failing checks (for an orchestrator's readiness probe, and compose's healthcheck)."""
    state = await readiness(services)
    checks = dict(state.checks)
    loop = request.app.state.worker_loop
    if loop is not None:
        checks["workers"] = "stopped" if loop.done() else "ok"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(services: ServicesDep, _access: MetricsAccessDep) -> Response:
    store = services.store
    services.metrics.refresh(await store.queue_depth(), await store.governor_states())
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
