"""``/readyz`` for an orchestrator: ready only when the database answers at the migrations'
head and the result storage answers; 503 naming what is not, with no secret in it. Real
SQLite and PostgreSQL, a real S3 server (moto), the real app on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import make_settings, s3_settings

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer, free_port
from imagestudio.domain import API_PREFIX
from imagestudio.runtime.readiness import readiness
from imagestudio.runtime.services import open_services
from imagestudio.store.db import head_revisions
from testkit.s3 import S3Server


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_ready_when_the_database_is_migrated_and_the_storage_answers(
    tmp_path: Path, db_url: str, storage: str, request: pytest.FixtureRequest
) -> None:
    extra = {}
    if storage == "s3":
        extra = s3_settings(request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket"))
    settings = make_settings(tmp_path, db_url, **extra)
    with BackgroundServer(create_app(settings, workers=1)) as server:
        for path in ("/readyz", f"{API_PREFIX}/readyz"):
            answer = httpx.get(f"{server.url}{path}")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "status": "ready",
                "checks": {"database": "ok", "schema": "ok", "storage": "ok", "workers": "ok"},
            }
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_missing_bucket_is_not_ready_and_says_so_without_the_secret(
    tmp_path: Path, s3: S3Server
) -> None:
    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", **s3_settings(s3, "not-made-yet")
    )
    with BackgroundServer(create_app(settings)) as server:
        answer = httpx.get(f"{server.url}/readyz")
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["database"] == "ok"
        assert "s3://not-made-yet/studio/" in body["checks"]["storage"]
        assert s3.secret_key not in answer.text
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
        s3.make_bucket("not-made-yet")
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # ready once it exists


async def test_an_unmigrated_database_is_not_ready(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    async with open_services(settings, migrate=False) as services:
        state = await readiness(services)
    assert state.checks["database"] == "ok"
    assert state.checks["schema"] == (
        f"at none, not at head {', '.join(sorted(head_revisions()))}: run imagestudio migrate"
    )


async def test_an_unreachable_database_is_not_ready_and_its_url_is_not_shown(
    tmp_path: Path,
) -> None:
    url = f"postgresql+asyncpg://app:db-password-123@127.0.0.1:{free_port()}/nowhere"
    async with open_services(make_settings(tmp_path, url), migrate=False) as services:
        state = await readiness(services)
    assert state.checks["database"].startswith("unreachable (")
    assert "db-password-123" not in repr(state)
    assert state.checks["storage"] == "ok"
