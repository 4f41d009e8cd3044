"""Scheduling under failure, on SQLite and PostgreSQL: job-wide stops, cancel, retry, fairness,
per-job limits. Real store, real worker, real fake provider on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from imagestudio.cli.background_server import BackgroundServer
from imagestudio.errors import ApiKeyRequired
from imagestudio.providers.fake import FakeProviderConfig, create_fake_provider_app
from imagestudio.runtime.services import Services
from imagestudio.store.records import JobRecord
from testkit.payloads import batch_payload


@contextlib.contextmanager
def provider(**config: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_fake_provider_app(FakeProviderConfig(seed=3, **config))) as s:
        yield s


@contextlib.asynccontextmanager
async def running_worker(services: Services, concurrency: int) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(services.worker(concurrency).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_job(services: Services, job_id: str, within: float = 30.0) -> JobRecord:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job = await services.store.get_job(None, job_id)
        if job.status in ("succeeded", "failed", "partially_failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end in {within}s: {job.status}")


async def wait_for_first_result(services: Services, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (await services.store.get_job(None, job_id)).result_image_urls:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} made no result in 20s")


def calls(server: BackgroundServer) -> list[dict[str, Any]]:
    stats = httpx.get(f"{server.url}/_fake/stats").json()
    return list(stats["calls"])


async def test_bad_key_stops_the_job_fast(services: Services) -> None:
    with provider(latency_ms=20) as fake:
        payload = batch_payload(fake.url, "bad-key", images_per_sku=(10, 10), api_key="sk-bad-1")
        await services.jobs.submit(payload, None)
        await services.worker(4).run_until_idle()
        job = await wait_job(services, "bad-key")
        made = len(calls(fake))
    assert job.status == "failed"
    assert "AuthFailed" in (job.error or "")
    assert "sk-bad-1" not in job.error
    assert made <= 4, f"{made} provider calls for a job with a bad key"
    images = await services.store.images(job.id)
    assert {i.status for i in images} == {"failed"}
    assert all(i.error and "AuthFailed" in i.error for i in images)


async def test_exhausted_quota_stops_the_job_fast(services: Services) -> None:
    with provider(latency_ms=20) as fake:
        payload = batch_payload(fake.url, "quota", images_per_sku=(20,), api_key="sk-noquota-1")
        payload["options"]["max_concurrency"] = 4  # calls in flight follow the governor, not slots
        await services.jobs.submit(payload, None)
        await services.worker(4).run_until_idle()
        made = len(calls(fake))
    job = await services.store.get_job(None, "quota")
    assert job.status == "failed"
    assert "QuotaExhausted" in (job.error or "")
    assert made <= 4


async def test_retry_reruns_exactly_the_failed_images(services: Services) -> None:
    with provider(latency_ms=10) as fake:
        payload = batch_payload(fake.url, "retry", images_per_sku=(3, 3))
        # The main image of each SKU (its first) gets the refusing template: 2 of 6 fail.
        payload["options"]["prompt_templates"]["main_cn"] = "[[refuse]] main"
        await services.jobs.submit(payload, None)
        await services.worker(4).run_until_idle()
        job = await services.store.get_job(None, "retry")
        assert job.status == "partially_failed"
        before = {i.position: i for i in await services.store.images(job.id)}
        assert [p for p, i in before.items() if i.status == "failed"] == [0, 3]
        made = len(calls(fake))
        # The key was erased when the job ended: a retry must bring it again.
        with pytest.raises(ApiKeyRequired):
            await services.store.retry_failed(job.id, None, None)
        requeued = await services.store.retry_failed(
            job.id, services.box.seal("sk-test-key-0123456789"), "sk-test-key-0123456789"
        )
        assert requeued == 2
        await services.worker(4).run_until_idle()
        assert len(calls(fake)) - made == 2
        after = {i.position: i for i in await services.store.images(job.id)}
    for position, image in before.items():
        if image.status == "succeeded":
            assert after[position].result_key == image.result_key
            assert after[position].attempts == image.attempts
        else:
            assert after[position].status == "failed"
            assert after[position].attempts == 1


async def test_cancel_stops_calls_and_keeps_done_images(services: Services) -> None:
    with provider(latency_ms=400, concurrency=4) as fake:
        payload = batch_payload(fake.url, "cancel", images_per_sku=(30, 30), size=512)
        result = await services.jobs.submit(payload, None)
        async with running_worker(services, 4):
            await wait_for_first_result(services, "cancel")
            await asyncio.sleep(1.0)
            cancelled_at = time.time()
            await services.store.cancel(result.job.id)
            job = await wait_job(services, "cancel", within=10)
            await asyncio.sleep(1.0)
        # A call whose admission check ran just before the cancel committed may still reach
        # the provider a moment later; none may start after that window.
        late = [c for c in calls(fake) if c["start"] > cancelled_at + 0.5]
    assert job.status == "cancelled"
    assert late == []
    progress = await services.store.progress(None, "cancel")
    assert progress.counts["succeeded"] > 0
    assert progress.counts["succeeded"] + progress.counts["cancelled"] == 60
    assert len(job.result_image_urls) == progress.counts["succeeded"]
    assert await services.store.cancel(result.job.id) == "cancelled"  # idempotent


async def test_small_job_is_not_stuck_behind_a_big_one(services: Services) -> None:
    with provider(latency_ms=200, concurrency=4) as fake:
        big = batch_payload(fake.url, "big", images_per_sku=(60,), user_id="alice")
        small = batch_payload(
            fake.url, "small", images_per_sku=(4,), user_id="bob", api_key="sk-bob-key-1"
        )
        await services.jobs.submit(big, None)
        async with running_worker(services, 4):
            await asyncio.sleep(0.5)
            posted = time.monotonic()
            await services.jobs.submit(small, None)
            services.wake_workers()
            job = await wait_job(services, "small", within=20)
            small_took = time.monotonic() - posted
            big_done = (await services.store.progress(None, "big")).counts["succeeded"]
    assert job.status == "succeeded"
    # The small job waits about one slot turnover, not behind the big one: it ends while
    # most of the big job is still to do, however fast or slow this machine is.
    assert big_done < 30, f"small job took {small_took:.1f}s; big job had {big_done}/60 done"


async def test_max_concurrency_and_sku_serial(services: Services) -> None:
    with provider(latency_ms=150) as fake:
        payload = batch_payload(
            fake.url, "serial", images_per_sku=(3, 3, 3), options={"sku_serial": True}
        )
        capped = batch_payload(
            fake.url,
            "capped",
            images_per_sku=(6,),
            api_key="sk-capped-1",
            options={"max_concurrency": 2},
        )
        await services.jobs.submit(payload, None)
        await services.jobs.submit(capped, None)
        await services.worker(8).run_until_idle()
        log = calls(fake)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for call in log:
        by_key.setdefault(call["key"], []).append(call)
    assert sorted(len(v) for v in by_key.values()) == [6, 9]
    serial_job = await services.store.get_job(None, "serial")
    images = await services.store.images(serial_job.id)
    for sku in ("SKU1", "SKU2", "SKU3"):
        mine = [i for i in images if i.sku == sku]
        for earlier, later in itertools.pairwise(mine):
            assert earlier.finished_at is not None
            assert later.started_at is not None
            assert later.started_at >= earlier.finished_at
    for key_calls in by_key.values():
        if len(key_calls) == 6:
            assert max_overlap(key_calls) <= 2, "max_concurrency=2 was exceeded"
        else:
            assert max_overlap(key_calls) <= 3, "sku_serial ran two images of one SKU at once"


def max_overlap(intervals: list[dict[str, Any]]) -> int:
    points = sorted([(c["start"], 1) for c in intervals] + [(c["end"], -1) for c in intervals])
    live = peak = 0
    for _, delta in points:
        live += delta
        peak = max(peak, live)
    return peak
