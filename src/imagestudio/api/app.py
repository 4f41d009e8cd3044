"""The FastAPI application: ``create_app(settings, workers=N)``."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from imagestudio.api.limits import BodyLimit, BodyTooLarge, NulFreeUrl
from imagestudio.api.routes import dashboard, files, jobs, results, system
from imagestudio.domain import API_PREFIX
from imagestudio.errors import (
    ApiKeyRequired,
    JobConflict,
    JobNotFound,
    PayloadInvalid,
    TooMuchInFlight,
)
from imagestudio.runtime.services import open_services
from imagestudio.settings import Settings


def create_app(settings: Settings, *, workers: int = 0) -> FastAPI:
    """The API; with ``workers > 0`` it also runs that many task slots in-process."""
    settings.token_users()  # a malformed IMAGESTUDIO_API_TOKENS fails here, not per request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            stop = asyncio.Event()
            loop = None
            if workers > 0:
                loop = asyncio.create_task(services.worker(workers).run(stop))
            app.state.worker_loop = loop
            try:
                yield
            finally:
                stop.set()
                if loop is not None:
                    await loop

    app = FastAPI(title="imagestudio", version="0.1.0", lifespan=lifespan)
    app.state.worker_loop = None
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(NulFreeUrl)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(system.router, prefix=API_PREFIX)
    app.include_router(files.router, prefix=API_PREFIX)
    app.include_router(results.router, prefix=API_PREFIX)
    app.include_router(dashboard.router, prefix=API_PREFIX)
    app.include_router(dashboard.pages)
    app.add_api_route("/healthz", system.healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", system.readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", system.metrics, methods=["GET"], include_in_schema=False)
    _error_handlers(app)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            field = ".".join(loc[1:]) if loc[:1] == ["body"] and len(loc) > 1 else ".".join(loc)
            detail.append(
                {
                    "loc": loc,
                    "field": field or "body",
                    "msg": error.get("msg", ""),
                    "type": error.get("type", "invalid"),
                }
            )
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(TooMuchInFlight)
    async def _too_much(_: Request, exc: TooMuchInFlight) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.message, "error": "too_much_in_flight"},
            status_code=429,
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
        )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail, "error": "body_too_large"},
            status_code=413,
            headers={"Connection": "close"},
        )

    @app.exception_handler(PayloadInvalid)
    async def _invalid(_: Request, exc: PayloadInvalid) -> JSONResponse:
        detail = [
            {
                "loc": ["body", *exc.field.split(".")] if exc.field != "body" else ["body"],
                "field": exc.field,
                "msg": exc.reason,
                "type": "payload_invalid",
            }
        ]
        return JSONResponse({"detail": detail, "error": exc.message}, status_code=422)

    @app.exception_handler(JobConflict)
    async def _conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "error": "job_id_conflict"}, status_code=409)

    @app.exception_handler(JobNotFound)
    async def _missing(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "error": "not_found"}, status_code=404)

    @app.exception_handler(ApiKeyRequired)
    async def _key_required(_: Request, exc: ApiKeyRequired) -> JSONResponse:
        detail = [
            {
                "loc": ["body", "api_key"],
                "field": "api_key",
                "msg": exc.message,
                "type": "api_key_required",
            }
        ]
        return JSONResponse({"detail": detail, "error": exc.message}, status_code=422)
