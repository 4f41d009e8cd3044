"""schemathesis against the app's OpenAPI schema on a real server (uvicorn on loopback, real
SQLite and PostgreSQL): every generated request must be answered below 500.

Bounded and deterministic: ``derandomize`` fixes the examples, ``MAX_EXAMPLES`` per operation
keeps the run well under a minute. Three requests in four carry a valid bearer token (the rest
whatever was generated), and half of the job routes' requests name a job that exists (ended,
so its event stream ends), so offsets, cursors and ``Last-Event-ID`` reach the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import structlog
from conftest import make_settings
from hypothesis import HealthCheck, settings

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.domain import API_PREFIX
from imagestudio.settings import Settings
from testkit import pg
from testkit.payloads import batch_payload

MAX_EXAMPLES = 80
TOKEN = "tok-fuzz-0123456789"
JOB = "job-1"


@pytest.fixture(scope="module")
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """SQLite, or a PostgreSQL database cloned from the migrated template (one per module:
    the examples of every operation share it)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzzdb') / 'fuzz.db'}"
        return
    template: str = request.getfixturevalue("pg_template")
    name = f"imagestudio_fuzz_{uuid.uuid4().hex[:12]}"
    url = pg.create(name, template=template)
    try:
        yield url
    finally:
        pg.drop(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[str]:
    structlog.reset_defaults()
    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    app_settings = make_settings(
        tmp_path,
        database,
        api_tokens=f"{TOKEN}=user-123",
        imaging_processes=0,
        events_poll_seconds=0.05,
    )
    with BackgroundServer(create_app(app_settings, workers=0)) as background:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"{background.url}{API_PREFIX}", headers=headers) as client:
            raw = batch_payload("http://127.0.0.1:9", JOB, size=256)
            assert client.post("/jobs", json=raw).status_code == 201
            assert client.post(f"/jobs/{JOB}/cancel").status_code == 202
        yield background.url


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document, as ``/openapi.json`` serves it (no services needed)."""
    document: dict[str, Any] = create_app(Settings(_env_file=None)).openapi()
    return document


schema = schemathesis.openapi.from_dict(_openapi())


def _coin(case: Any, salt: str) -> int:
    """A deterministic 0..3 from the case (so a failing example replays the same way)."""
    seed = f"{salt}|{case.method}|{case.path}|{case.path_parameters}|{case.query}|{case.body}"
    return hashlib.sha256(seed.encode()).digest()[0] % 4


@pytest.mark.parametrize(
    "database",
    ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
    scope="module",
)
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gets_a_server_error(case: Any, server: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if _coin(case, "auth") else None
    params = case.path_parameters
    if params and "job_id" in params and _coin(case, "job") < 2 and "retry" not in case.path:
        params["job_id"] = JOB
    with contextlib.suppress(KeyError):
        case.headers.pop("Content-Length")
    response = case.call(base_url=server, headers=headers, timeout=20)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
    )
