"""Typed dependencies for the routes: the services and the calling user."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagestudio.domain import FILES_PATH
from imagestudio.runtime.services import Services
from imagestudio.security.signing import UrlSigner
from imagestudio.store.records import JobRecord
from imagestudio.store.store import Store

_bearer = HTTPBearer(auto_error=False)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_store(services: ServicesDep) -> Store:
    return services.store


StoreDep = Annotated[Store, Depends(get_store)]


def get_user(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The user a bearer token names; ``None`` in local mode (no tokens configured)."""
    tokens = services.settings.token_users()
    if not tokens:
        return None
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    for token, user in tokens.items():
        if secrets.compare_digest(token.encode(), credentials.credentials.encode()):
            return user
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, "unknown token", headers={"WWW-Authenticate": "Bearer"}
    )


UserDep = Annotated[str | None, Depends(get_user)]


def require_metrics_access(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """``/metrics`` shows every user's provider keys: with API tokens set it answers only
    ``IMAGESTUDIO_METRICS_TOKEN`` (a user's token is not enough); local mode stays open."""
    settings = services.settings
    if not settings.token_users():
        return
    expected = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    given = credentials.credentials if credentials is not None else ""
    if not expected or not secrets.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "metrics need IMAGESTUDIO_METRICS_TOKEN as the bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def get_signer(services: ServicesDep) -> UrlSigner | None:
    """The result URLs' signer with API tokens set; None in local mode (files are open)."""
    settings = services.settings
    if not settings.token_users():
        return None
    return UrlSigner(
        services.box.derive("result-urls"),
        files_path=FILES_PATH,
        ttl_seconds=settings.files_url_ttl_seconds,
    )


SignerDep = Annotated[UrlSigner | None, Depends(get_signer)]


async def get_job(store: StoreDep, user: UserDep, job_id: str) -> JobRecord:
    """The caller's job named in the path (404 before any answer starts streaming)."""
    return await store.get_job(user, job_id)


JobDep = Annotated[JobRecord, Depends(get_job)]


MetricsAccessDep = Annotated[None, Depends(require_metrics_access)]
