"""Shared fixtures: real SQLite and real PostgreSQL, real loopback servers.

PostgreSQL tests clone a migrated template database per test (``CREATE DATABASE ... TEMPLATE``,
``testkit.pg``).
Locally they skip when PostgreSQL is unreachable; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from imagestudio.store.db import migrate, migrate_async
from testkit import pg
from testkit.s3 import S3Server, s3_server
from testkit.settings import loopback_settings

TEMPLATE = f"imagestudio_tpl_{os.getpid()}"  # one per test session: sessions may overlap
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database, made once per test session."""
    problem = pg.reachable()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true and unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    pg.drop(TEMPLATE)
    migrate(pg.create(TEMPLATE))
    yield TEMPLATE
    pg.drop(TEMPLATE)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh database per test, cloned from the migrated template."""
    name = f"imagestudio_t_{uuid.uuid4().hex[:12]}"
    url = pg.create(name, template=pg_template)
    try:
        yield url
    finally:
        pg.drop(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same store tests run on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def migrated(db_url: str) -> str:
    """``db_url`` with the schema in place (PostgreSQL tests get a migrated template's clone)."""
    if db_url.startswith("sqlite"):
        await migrate_async(db_url)
    return db_url


def make_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "lease_seconds": 5.0,
        "poll_interval": 0.05,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
    }
    values.update(overrides)
    return loopback_settings(tmp_path / "data", db_url, **values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings) as built:
        yield built


@pytest.fixture
def fake_provider() -> Iterator[BackgroundServer]:
    """A real fake provider on loopback, fast enough for tests."""
    app = create_fake_provider_app(FakeProviderConfig(latency_ms=20, seed=1))
    with BackgroundServer(app) as server:
        yield server


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3 HTTP server (moto's, in its own process) on a loopback port, per session."""
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3: S3Server) -> str:
    """A new empty bucket on ``s3`` for one test."""
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(name)
    return name


def s3_settings(s3: S3Server, bucket: str, prefix: str = "studio") -> dict[str, object]:
    """Settings overrides that put results in ``s3://bucket/prefix`` on ``s3``."""
    return {
        "storage_url": f"s3://{bucket}/{prefix}",
        "aws_endpoint_url": s3.endpoint,
        "aws_region": s3.region,
        "aws_access_key_id": s3.access_key,
        "aws_secret_access_key": s3.secret_key,
    }
