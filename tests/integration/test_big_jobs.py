"""Big jobs: the answers about a 20,000-image job stay bounded, pages cover it exactly, and the
roll-up's result-URL rule (docs/design.md "Big jobs") holds; real server, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_settings

from imagestudio.api.app import create_app
from imagestudio.cli.background_server import BackgroundServer
from imagestudio.cli.client import ApiClient
from imagestudio.domain import API_PREFIX
from imagestudio.jobs.intake import IntakeLimits, build_job_spec, parse_payload
from imagestudio.policy.governor import GovernorParams
from imagestudio.store.db import create_engine
from imagestudio.store.jobs import URLS_EVERY_COMPLETION_MAX, URLS_REFRESH_SECONDS, urls_due
from imagestudio.store.records import ClaimedTask, Succeeded
from imagestudio.store.store import Store
from testkit.payloads import batch_payload

BIG = 20_000
SOURCES = "http://127.0.0.1:9"  # nothing runs: no source is fetched, no provider called
ANSWER_BYTES = 10_000  # a job's answer without result URLs: counts, links, settings


def big_payload(job_id: str, images: int) -> dict[str, Any]:
    return batch_payload(SOURCES, job_id, images_per_sku=[100] * (images // 100))


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[str]:
    """An API server without workers (the job stays queued unless a test claims by hand)."""
    settings = make_settings(tmp_path, db_url, max_images_per_job=BIG)
    with BackgroundServer(create_app(settings, workers=0)) as running:
        yield running.url


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{server}{API_PREFIX}", timeout=60) as client:
        yield client


def first_event(api: httpx.Client, path: str) -> tuple[str, str]:
    """The first Server-Sent Event of ``path``: ``(event, data)``."""
    event, data = "", ""
    with api.stream("GET", path) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data = line.partition(":")[2].strip()
            elif not line and event:
                return event, data
    raise AssertionError("the stream ended before its first event")


def test_a_big_jobs_answers_are_bounded(api: httpx.Client) -> None:
    posted = api.post("/jobs", json=big_payload("big", BIG))
    assert posted.status_code == 201, posted.text
    again = api.post("/jobs", json=big_payload("big", BIG))
    assert again.status_code == 200
    for answer in (posted, again, api.get("/jobs/big")):
        assert len(answer.content) < ANSWER_BYTES
        job = answer.json()
        assert job["counts"] == {
            "total": BIG,
            "queued": BIG,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
        }
        assert job["skus"] == []
        assert job["skus_truncated"] is True
        assert job["result_image_urls"] == []
    event, data = first_event(api, "/jobs/big/events")
    assert event == "snapshot"
    assert len(data) < ANSWER_BYTES
    assert json.loads(data)["skus_truncated"] is True
    listed = api.get("/jobs").json()["jobs"]
    assert [(j["job_id"], j["total"], j["completed"]) for j in listed] == [("big", BIG, 0)]


def test_a_small_job_keeps_its_per_sku_counts(api: httpx.Client) -> None:
    job = api.post("/jobs", json=batch_payload(SOURCES, "small")).json()
    assert job["skus_truncated"] is False
    assert [(s["sku"], s["total"]) for s in job["skus"]] == [("SKU1", 3), ("SKU2", 1), ("SKU3", 1)]


def test_image_pages_cover_the_job_in_order(api: httpx.Client, server: str) -> None:
    assert api.post("/jobs", json=big_payload("big", BIG)).status_code == 201
    first = api.get("/jobs/big/images").json()
    assert (first["total"], first["offset"], first["limit"], first["next_offset"]) == (
        BIG,
        0,
        500,
        500,
    )
    assert [i["position"] for i in first["images"]] == list(range(500))
    assert first["next"] == f"{API_PREFIX}/jobs/big/images?offset=500&limit=500"
    last = api.get("/jobs/big/images", params={"offset": BIG - 300, "limit": 500}).json()
    assert [i["position"] for i in last["images"]] == list(range(BIG - 300, BIG))
    assert last["next_offset"] is None
    assert last["next"] is None
    past = api.get("/jobs/big/images", params={"offset": BIG}).json()
    assert (past["images"], past["next_offset"]) == ([], None)
    assert api.get("/jobs/big/images", params={"limit": 5001}).status_code == 422
    assert api.get("/jobs/big/images", params={"offset": -1}).status_code == 422
    assert api.get("/jobs/nope/images").status_code == 404
    client = ApiClient(server)
    try:
        every = client.images("big")
    finally:
        client.close()
    assert [i["position"] for i in every] == list(range(BIG))
    assert every[0]["sku"] == "SKU1"
    assert every[-1]["sku"] == f"SKU{BIG // 100}"


async def claim_and_finish(db_url: str, n: int) -> list[ClaimedTask]:
    """Claim ``n`` tasks of the job on the server's database and let all but one succeed."""
    store = Store(create_engine(db_url), governor=GovernorParams(initial_window=64))
    try:
        tasks = await store.claim("w", n, 30.0)
        for task in tasks[:-1]:
            await store.finish(task, Succeeded(result_key="k", result_url=f"/r/{task.position}"))
        return tasks
    finally:
        await store.close()


def test_timeline_pages_by_cursor(api: httpx.Client, db_url: str) -> None:
    assert api.post("/jobs", json=big_payload("big", BIG)).status_code == 201
    tasks = asyncio.run(claim_and_finish(db_url, 4))  # the provider key's first window: 4
    assert len(tasks) == 4
    job = api.get("/jobs/big").json()
    assert job["counts"]["running"] == 1
    assert job["counts"]["succeeded"] == 3
    assert job["counts"]["queued"] == BIG - 4
    assert len(api.get("/jobs/big").content) < ANSWER_BYTES + 3 * 20
    whole = api.get("/jobs/big/timeline").json()
    assert len(whole["calls"]) == 4
    assert whole["next_cursor"] is None
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.get("/jobs/big/timeline", params=params).json()
        pages.append(len(page["calls"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert page["next"].endswith(f"?cursor={cursor}&limit=3")
    assert pages == [3, 1]
    assert api.get("/jobs/big/timeline", params={"cursor": "x"}).status_code == 422


# -- the result-URL rule ----------------------------------------------------------------------


def test_urls_are_rebuilt_always_for_small_jobs_and_when_a_job_ends() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    just = now - timedelta(seconds=0.1)
    long_ago = now - timedelta(seconds=URLS_REFRESH_SECONDS)
    small, big = URLS_EVERY_COMPLETION_MAX, URLS_EVERY_COMPLETION_MAX + 1
    assert urls_due(small, just, now, ended=False)
    assert not urls_due(big, just, now, ended=False)
    assert urls_due(big, just, now, ended=True)
    assert urls_due(big, long_ago, now, ended=False)
    assert urls_due(big, None, now, ended=False)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_a_big_jobs_urls_refresh_every_few_seconds_and_are_exact_at_the_end(
    migrated: str,
) -> None:
    clock = Clock()
    store = Store(create_engine(migrated), clock=clock, governor=GovernorParams(initial_window=64))
    images = URLS_EVERY_COMPLETION_MAX + 100
    spec = build_job_spec(
        parse_payload(big_payload("big", images)), user_id="u", limits=IntakeLimits(images)
    )
    try:
        job = (await store.submit(spec, b"sealed")).job
        tasks = sorted(await store.claim("w", 6, 30.0), key=lambda t: -t.position)

        async def succeed(task: ClaimedTask) -> list[str]:
            await store.finish(task, Succeeded(result_key="k", result_url=f"/r/{task.position}"))
            return (await store.get_job("u", "big")).result_image_urls or []

        assert await succeed(tasks[0]) == []  # refreshed at submit, under 5 s ago
        clock.now += timedelta(seconds=URLS_REFRESH_SECONDS)
        both = await succeed(tasks[1])
        assert both == [f"/r/{t.position}" for t in sorted(tasks[:2], key=lambda t: t.position)]
        assert await succeed(tasks[2]) == both  # just refreshed
        await store.cancel(job.id)  # the job ends: exact
        final = await store.get_job("u", "big")
        assert final.status == "cancelled"
        assert final.result_image_urls == [f"/r/{p}" for p in sorted(t.position for t in tasks[:3])]
        assert final.counts["succeeded"] == 3
        assert final.counts["cancelled"] == images - 3
    finally:
        await store.close()


async def test_nothing_of_a_submitted_jobs_payload_stays_in_memory(migrated: str) -> None:
    """SQLAlchemy's compiled cache keeps the first statement of each shape with the values
    bound into it. The job's payload goes to the INSERT as a parameter, so once a big job is
    written nothing of it stays alive (it was about 40 MB of objects for 100,000 images, kept
    for the life of the process); the roll-up's result URLs go the same way."""
    store = Store(create_engine(migrated), governor=GovernorParams(initial_window=64))
    tracemalloc.start()
    try:
        spec = build_job_spec(
            parse_payload(big_payload("big", BIG)), user_id="u", limits=IntakeLimits(BIG)
        )
        loaded = tracemalloc.get_traced_memory()[0]
        await store.submit(spec, b"sealed")
        del spec
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        await store.close()
    assert loaded > 5 * 2**20  # the spec itself was big...
    assert retained < 2 * 2**20  # ...and is gone: engines, pools and compiled SQL remain
