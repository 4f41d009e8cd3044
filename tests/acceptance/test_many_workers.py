"""Cancel and fairness hold across several real worker processes sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_worker_crash import worker_process  # tests/acceptance is on the path (prepend mode)

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.runtime.services import Services, open_services
from imagestudio.settings import Settings
from testkit.payloads import batch_payload
from testkit.settings import loopback_settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return loopback_settings(tmp_path / "data", pg_url, lease_seconds=3.0, poll_interval=0.1)


@pytest.fixture
def fake() -> Iterator[BackgroundServer]:
    config = FakeProviderConfig(latency_ms=400, concurrency=4, seed=11)
    with BackgroundServer(create_fake_provider_app(config)) as server:
        yield server


@contextlib.asynccontextmanager
async def workers(settings: Settings, count: int) -> AsyncIterator[None]:
    """``count`` real ``imagestudio worker`` processes (the crash tests' launcher)."""
    async with contextlib.AsyncExitStack() as stack:
        for n in range(count):
            await stack.enter_async_context(worker_process(settings, f"worker-{n}"))
        yield


async def poll_job(services: Services, job_id: str, done: Any, within: float) -> float:
    """Seconds until ``done(progress)`` holds for the job."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if done(await services.store.progress(None, job_id)):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id}: condition not reached in {within}s")


async def test_cancel_reaches_every_worker_process(
    settings: Settings, fake: BackgroundServer
) -> None:
    settings.data_dir.mkdir(parents=True)
    async with open_services(settings) as services:
        payload = batch_payload(fake.url, "cancel", images_per_sku=(30, 30), size=256)
        result = await services.jobs.submit(payload, None)
        async with workers(settings, 3):
            await poll_job(services, "cancel", lambda p: p.counts["succeeded"] > 0, 60)
            cancelled_at = time.time()
            await services.store.cancel(result.job.id)
            took = await poll_job(services, "cancel", lambda p: p.counts["running"] == 0, 10)
            await asyncio.sleep(1.0)
        async with httpx.AsyncClient() as client:
            calls = (await client.get(f"{fake.url}/_fake/stats")).json()["calls"]
        progress = await services.store.progress(None, "cancel")
    late = [c for c in calls if c["start"] > cancelled_at + 0.5]
    assert progress.job.status == "cancelled"
    assert took < 10
    assert late == []
    assert progress.counts["succeeded"] + progress.counts["cancelled"] == 60


async def test_small_job_goes_first_across_worker_processes(
    settings: Settings, fake: BackgroundServer
) -> None:
    settings.data_dir.mkdir(parents=True)
    async with open_services(settings) as services:
        big = batch_payload(fake.url, "big", images_per_sku=(80,), user_id="alice", size=256)
        small = batch_payload(fake.url, "small", images_per_sku=(4,), user_id="bob", size=256)
        await services.jobs.submit(big, None)
        async with workers(settings, 3):
            await poll_job(services, "big", lambda p: p.counts["succeeded"] >= 4, 60)
            await services.jobs.submit(small, None)
            await poll_job(services, "small", lambda p: p.job.status in ("succeeded", "failed"), 60)
            done_big = (await services.store.progress(None, "big")).counts["succeeded"]
        small_job = await services.store.get_job(None, "small")
    assert small_job.status == "succeeded"
    assert done_big < 40, f"the big job had {done_big}/80 done when the small one ended"
